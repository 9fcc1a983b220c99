"""The dataset job on an in-memory ``nn.Module`` (issue 19, item 10): Parquet, reruns and run
records from Python, without a model file."""

from __future__ import annotations

import json
from pathlib import Path

import fdpipe
import pytest
import torch
import torchvision
from fdpipe.job.parts import ResumeError
from image_files import write_images
from results import commit_versions


def test_run_job_takes_an_in_memory_module(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = torchvision.models.resnet18(num_classes=3).eval()
    write_images(tmp_path / "images", 2)
    config = fdpipe.JobConfig(
        input=tmp_path / "images", output=tmp_path / "out", model=module,
        methods=("gradcam",), progress=False, workers=1,
    )  # fmt: skip
    first = fdpipe.run_job(config)
    assert (first.done, first.failed) == (2, 0) and commit_versions(tmp_path / "out")
    maps, rows = fdpipe.read_maps(tmp_path / "out")
    assert maps.shape == (2, 7, 7) and set(rows["class_index"].to_pylist()) <= {0, 1, 2}
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "out" / "_runs").glob("*.json")]
    assert record["status"] == "complete" and record["params"]["layer"] == "layer4"
    again = fdpipe.run_job(config)
    assert (again.done, again.skipped) == (0, 2)  # a rerun explains nothing twice
    with torch.no_grad():
        module.fc.weight.add_(1.0)  # other weights: not the maps this output holds
    with pytest.raises(ResumeError, match="weights_id"):
        fdpipe.run_job(config)
