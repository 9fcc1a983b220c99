"""The setup stage: ``--batch-size auto``, found once from the device's free memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from fdpipe.api import Explainer
from fdpipe.cli import main
from fdpipe.export.loading import LoadedModel
from fdpipe.job import setup as job_setup
from fdpipe.job.config import ConfigError, JobConfig
from fdpipe.job.run import run_job
from image_files import explain_command, write_images
from results import run_metadata


@pytest.mark.parametrize("methods", [["gradcam"], ["gradcam", "fdcam", "scorecam"]])
def test_batch_size_auto(
    squeezenet: LoadedModel, monkeypatch: pytest.MonkeyPatch, methods: list[str]
) -> None:
    """``auto``: 16 on a CPU; on a GPU what its free memory holds beside the budget, less with
    more methods; never below one image or above the cap."""
    explainer = Explainer(squeezenet, methods, max_memory=1 << 30)
    assert job_setup.resolve_batch_size(7, explainer) == 7
    assert job_setup.resolve_batch_size("auto", explainer) == job_setup.CPU_BATCH
    one = explainer.network.input_bytes(tuple(squeezenet.input_shape))
    per_image = (2 + len(methods)) * one
    assert job_setup.auto_batch_size(explainer, (1 << 30) + 10 * per_image) == 10
    assert job_setup.auto_batch_size(explainer, (1 << 30) + 10 * per_image - 1) == 9
    assert job_setup.auto_batch_size(explainer, 1 << 20) == 1  # never below one image
    assert job_setup.auto_batch_size(explainer, 1 << 50) == job_setup.MAX_AUTO_BATCH
    monkeypatch.setattr(Explainer, "device", torch.device("cuda", 0))  # a GPU's view
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: ((1 << 30) + 5 * per_image, 0))
    assert job_setup.resolve_batch_size("auto", explainer) == 5


@pytest.mark.parametrize("size", [0, -3, "auto0", "nan", 2.0, True, None])
def test_a_bad_batch_size_in_the_api_is_refused(
    squeezenet: LoadedModel, size: object, tmp_path: Path
) -> None:
    explainer = Explainer(squeezenet, "gradcam")
    with pytest.raises(ConfigError, match="whole number of images"):
        job_setup.resolve_batch_size(size, explainer)  # type: ignore[arg-type]
    write_images(tmp_path / "images", 1)
    config = JobConfig(input=tmp_path / "images", output=tmp_path / "out", model="squeezenet1_1",
                       methods=("gradcam",), batch_size=size, progress=False)  # type: ignore[arg-type]  # fmt: skip
    with pytest.raises(ConfigError):
        run_job(config)


def test_the_resolved_batch_size_is_recorded(tmp_path: Path) -> None:
    """The run record keeps the option as given (auto), the parts' metadata the size run."""
    write_images(tmp_path / "images", 2)
    args = explain_command(tmp_path / "images", tmp_path / "out")
    args[args.index("--batch-size") + 1] = "auto"
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    (record_file,) = (tmp_path / "out" / "_runs").iterdir()
    record = json.loads(record_file.read_text())
    assert record["options"]["batch_size"] == "auto"
    assert record["run"]["batch_size"] == job_setup.CPU_BATCH
    assert run_metadata(tmp_path / "out")["run"]["batch_size"] == job_setup.CPU_BATCH


@pytest.mark.parametrize("size", ["0", "-3", "many", "1.5", "auto0", "nan", "inf", ""])
def test_a_bad_batch_size_is_a_usage_error(tmp_path: Path, size: str) -> None:
    args = explain_command(tmp_path, tmp_path / "out")
    args[args.index("--batch-size") + 1] = size
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "--batch-size" in result.output
    assert not (tmp_path / "out").exists()


def test_device_decoding_needs_the_models_own_preprocessing(squeezenet: LoadedModel) -> None:
    """A callable preprocess takes PIL images: ``auto`` decodes on the CPU, ``device`` is
    refused; the model's own ``Preprocess`` may decode on its device."""
    own = Explainer(squeezenet, "gradcam")
    assert job_setup.decode_device("device", own) == torch.device("cpu")
    transform = squeezenet.preprocess.__call__  # a plain callable: PIL image -> tensor
    layer = squeezenet.layer
    explainer = Explainer(squeezenet.module, "gradcam", layer=layer, preprocess=transform)
    assert type(explainer.model.preprocess).__name__ == "CallablePreprocess"
    assert job_setup.decode_device("auto", explainer) is None
    assert job_setup.decode_device("cpu", explainer) is None
    with pytest.raises(ConfigError, match="needs the model's own preprocessing"):
        job_setup.decode_device("device", explainer)
