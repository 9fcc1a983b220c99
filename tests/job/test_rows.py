"""The rows stage: the device running out of memory halves the batch instead of failing images."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from fdpipe.job import rows as job_rows
from fdpipe.job.config import JobConfig
from fdpipe.job.run import run_job
from image_files import write_images

COLUMNS = ["image_path", "status", "class_index", "map", "logit"]


def small_device(monkeypatch: pytest.MonkeyPatch, fits: int, sizes: list[int]) -> None:
    """A device on which a pass over more than ``fits`` images runs out of memory (injected
    through the ``explain_usable`` seam); ``sizes`` gets every pass's image count."""
    original = job_rows.explain_usable

    def explain_usable(explainer, images, *args):  # type: ignore[no-untyped-def]
        sizes.append(len(images))
        if len(images) > fits:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate (injected)")
        return original(explainer, images, *args)

    monkeypatch.setattr(job_rows, "explain_usable", explain_usable)


@pytest.mark.parametrize(
    ("fits", "passes"),
    [
        (2, [5, 2, 2, 1, 2, 2, 1]),  # 5 -> limit 2: 2 + 2 + 1; the second batch of 5 likewise
        (3, [5, 2, 2, 1, 2, 2, 1]),  # 5 -> limit 2 (halved, not searched): the same slices
        (1, [5, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]),  # 5 -> 2 -> 1: one image a pass from then on
    ],
)
def test_out_of_memory_halves_the_batch_instead_of_failing_images(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    fits: int,
    passes: list[int],
) -> None:
    """The rows equal those of a run that never ran out, and the batch size that fitted is kept
    for the rest of the run (one out-of-memory error, not one per batch)."""
    write_images(tmp_path / "images", 10)
    config = JobConfig(
        input=tmp_path / "images", output=tmp_path / "plain", model="squeezenet1_1",
        methods=("gradcam", "layercam"), top_k=2, batch_size=5, progress=False, workers=1,
    )  # fmt: skip
    run_job(config)
    sizes: list[int] = []
    small_device(monkeypatch, fits, sizes)
    with caplog.at_level(logging.WARNING, logger="fdpipe.job"):
        summary = run_job(replace(config, output=tmp_path / "halved"))
    assert (summary.done, summary.failed) == (10, 0)
    assert sizes == passes
    assert caplog.text.count("out of memory on a batch") == (2 if fits == 1 else 1)
    plain = pq.read_table(tmp_path / "plain", columns=COLUMNS).sort_by("image_path")
    halved = pq.read_table(tmp_path / "halved", columns=COLUMNS).sort_by("image_path")
    assert plain.column("class_index").equals(halved.column("class_index"))
    assert plain.column("image_path").equals(halved.column("image_path"))
    for a, b in zip(plain.column("map").to_pylist(), halved.column("map").to_pylist(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)  # another batch size: the last bits


def test_an_image_too_big_for_the_device_alone_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where not even one image fits, that image's row fails (retried by the next run); the
    others are explained."""
    write_images(tmp_path / "images", 4)
    sizes: list[int] = []
    original = job_rows.explain_usable

    def one_too_big(explainer, images, *args):  # type: ignore[no-untyped-def]
        sizes.append(len(images))
        if any(image.info.key.endswith("img_001.jpg") for image, _ in images):
            raise torch.OutOfMemoryError("CUDA out of memory (injected)\nsecond line")
        return original(explainer, images, *args)

    monkeypatch.setattr(job_rows, "explain_usable", one_too_big)
    summary = run_job(JobConfig(input=tmp_path / "images", output=tmp_path / "out",
                                model="squeezenet1_1", methods=("gradcam",), batch_size=4,
                                progress=False, workers=1))  # fmt: skip
    assert (summary.done, summary.failed) == (3, 1)
    assert sizes == [4, 2, 1, 1, 1, 1]  # 4 -> 2 (with it) -> 1: one a pass from then on
    rows = pq.read_table(tmp_path / "out", columns=["image_path", "status", "error"]).to_pylist()
    failed = [row for row in rows if row["status"] == "failed"]
    assert [row["image_path"].rsplit("/", 1)[-1] for row in failed] == ["img_001.jpg"]
    assert failed[0]["error"] == (
        "out of device memory on a single image: CUDA out of memory (injected)"
    )
