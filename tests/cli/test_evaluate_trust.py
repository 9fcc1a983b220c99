"""``evaluate --maps``: an output is data (issue 19, item 11). A model source that runs code (a
factory, a ``file.py:factory``, a TorchScript archive, a pickle) named in an output's metadata is
never imported unless the user names the same source on the command line. The rest of the setup
(weights file, weights map, preprocessing, score) is rebuilt from the metadata (item 5)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from click.testing import CliRunner
from fdpipe.cli import main
from fdpipe.cli.evaluate import maps_model
from fdpipe.export.request import ModelRequest
from fdpipe.job.table import COMMIT_KEY
from image_files import explain_command, write_images
from results import run_metadata
from torch import nn


def tamper(output: Path, params: dict[str, object]) -> None:
    """Rewrite run parameters in every commit's record of ``output``'s Delta log."""
    for log in (output / "_delta_log").glob("*.json"):
        actions = [json.loads(line) for line in log.read_text().splitlines()]
        for action in actions:
            info = action.get("commitInfo", {})
            if COMMIT_KEY in info:
                metadata = json.loads(info[COMMIT_KEY])
                metadata["params"] |= params
                info[COMMIT_KEY] = json.dumps(metadata)
        log.write_text("".join(json.dumps(action) + "\n" for action in actions))


def test_a_code_source_named_by_an_output_is_never_run(tmp_path: Path) -> None:
    images, output = tmp_path / "images", tmp_path / "out"
    write_images(images, 2)
    assert CliRunner().invoke(main, explain_command(images, output)).exit_code == 0
    marker = tmp_path / "ran"
    evil = tmp_path / "evil3.py"
    evil.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nbuild = None\n")
    tamper(output, {"model": f"{evil}:build", "source": f"{evil}:build"})
    args = ["evaluate", "--maps", str(output), "-i", str(images), "-o", str(tmp_path / "ev"),
            "--no-curves"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert not marker.exists()
    assert "runs code" in result.output and f"--model {evil}:build" in result.output
    named = CliRunner().invoke(main, [*args, "--model", f"{evil}:build"])
    assert marker.exists() and named.exit_code == 2  # the user's choice; its module is no model


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """No download may be tried: offline for fdpipe and the Hugging Face Hub, and a timm model
    asked for its published weights fails the test."""
    monkeypatch.setenv("FDPIPE_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    timm = pytest.importorskip("timm")
    create = timm.create_model

    def create_model(name: str, pretrained: bool = False, **kwargs: object) -> object:
        assert not pretrained, "a hub was asked for published weights"
        return create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", create_model)


def own_model(images: Path, output: Path, model: str, weights: Path, *extra: str) -> list[str]:
    return ["explain", "-i", str(images), "-o", str(output), "--model", model, "--weights",
            str(weights), "--method", "gradcam", "--input-size", "64", "--no-progress",
            *extra]  # fmt: skip


# Every preprocessing field away from the model's own, so that a field not rebuilt shows.
PREPROCESSING = ("--resize", "crop", "--crop-fraction", "0.8", "--input-size", "64,80",
                 "--mean", "0.4,0.45,0.5", "--std", "0.3",
                 "--normalisation", "tf-lite")  # fmt: skip


@pytest.mark.parametrize(
    "model",
    [
        ("timm:resnet10t", lambda: __import__("timm").create_model("resnet10t", num_classes=4)),
        ("resnet18", lambda: torchvision.models.resnet18(num_classes=4)),
    ],
    ids=["timm", "torchvision"],
)
def test_evaluate_maps_rebuilds_the_setup_from_the_recorded_weights_and_preprocessing(
    tmp_path: Path, no_hub: None, model: tuple[str, Callable[[], nn.Module]]
) -> None:
    """Issue 19, item 5: a timm model with --weights once retried the Hub for 54 s, then was
    refused; restating --weights, refused again for the preprocessing."""
    name, make = model
    images, output, weights = tmp_path / "images", tmp_path / "out", tmp_path / "w.pt"
    write_images(images, 2)
    torch.manual_seed(0)
    torch.save(make().state_dict(), weights)
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\ncup\nrocket\n")
    explain = CliRunner().invoke(main, own_model(images, output, name, weights, *PREPROCESSING,
                                                 "--class-names", str(names)))  # fmt: skip
    assert explain.exit_code == 0, explain.output
    params = run_metadata(output)["params"]
    assert params["weights_file"] == {"path": str(weights), "sha256": params["weights_id"]}
    names.unlink()  # the names travel in the output
    assert maps_model(output, ModelRequest()).class_names == ["cat", "dog", "cup", "rocket"]
    args = ["evaluate", "--maps", str(output), "-o", str(tmp_path / "ev"), "--no-curves",
            "--metric", "confidence"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "report:" in result.output


def test_a_moved_or_changed_weights_file_is_refused_in_one_line(
    tmp_path: Path, no_hub: None
) -> None:
    images, output, weights = tmp_path / "images", tmp_path / "out", tmp_path / "w.pt"
    write_images(images, 2)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=4).state_dict(), weights)
    explain = CliRunner().invoke(main, own_model(images, output, "resnet18", weights))
    assert explain.exit_code == 0, explain.output
    args = ["evaluate", "--maps", str(output), "-o", str(tmp_path / "ev"), "--no-curves",
            "--metric", "confidence"]  # fmt: skip
    moved = weights.rename(tmp_path / "moved.pt")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "which is gone" in result.output, result.output
    assert result.output.count("\n") == 1 and str(weights) in result.output
    restated = CliRunner().invoke(main, [*args, "--weights", str(moved)])  # the same content
    assert restated.exit_code == 0, restated.output
    torch.save(torchvision.models.resnet18(num_classes=4).state_dict(), weights)  # others
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "has changed since" in result.output, result.output
    assert result.output.count("\n") == 1


@pytest.mark.parametrize(
    "params",
    [
        {"weights_file": ["not", "a", "dict"]},
        {"weights_file": {"path": "/dev/null"}},
        {"weights_map": ["a", "b"]},
        {"weights_map": "/etc/passwd"},
        {"preprocess": {"resize": "big"}},
        {"preprocess": {"callable": "<lambda>", "input_size": [64, 64]}},
        {"score": "banana"},
        {"class_names": "cat"},
        {"model": None, "source": None},
        {"layer": ["x"]},
    ],
    ids=[
        "weights-file-list",
        "weights-file-no-hash",
        "map-list",
        "map-path",
        "preprocess",
        "callable",
        "score",
        "names",
        "no-model",
        "layer-list",
    ],
)
def test_a_tampered_record_is_refused_in_one_line(
    tmp_path: Path, no_hub: None, params: dict[str, object]
) -> None:
    images, output, weights = tmp_path / "images", tmp_path / "out", tmp_path / "w.pt"
    write_images(images, 2)
    torch.save(torchvision.models.resnet18(num_classes=4).state_dict(), weights)
    explain = CliRunner().invoke(main, own_model(images, output, "resnet18", weights))
    assert explain.exit_code == 0, explain.output
    tamper(output, params)
    args = ["evaluate", "--maps", str(output), "-o", str(tmp_path / "ev"), "--no-curves",
            "--metric", "confidence"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
