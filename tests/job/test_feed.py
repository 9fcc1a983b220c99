"""Feeding the device: the batch ahead sent while the current one runs, and host waits per
batch, not per image, in the job's path for every method."""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from fdpipe.api import Explainer
from fdpipe.export.loading import LoadedModel
from fdpipe.job import rows as job_rows
from fdpipe.job.config import JobConfig
from fdpipe.job.decode import DecodedImage
from fdpipe.job.feed import Feeder, one_ahead
from fdpipe.job.run import run_job
from fdpipe.job.schema import ImageInfo
from image_files import write_images
from syncs import CountSyncs


def images(count: int, device: str = "cpu") -> list[DecodedImage]:
    generator = torch.Generator().manual_seed(count)
    return [
        DecodedImage(ImageInfo(f"img_{i}", None, None, None),
                     torch.rand(3, 224, 224, generator=generator).to(device), None, 0.0)
        for i in range(count)
    ]  # fmt: skip


def test_one_ahead_pairs_each_batch_with_the_next() -> None:
    assert list(one_ahead([1, 2, 3])) == [(1, 2), (2, 3), (3, None)]
    assert list(one_ahead([])) == []


def test_on_the_cpu_the_feeder_runs_the_step_in_line_and_copies_nothing() -> None:
    batch, seen = images(3), []
    tensors = [image.tensor for image in batch]
    sent = Feeder(torch.device("cpu")).send(batch, seen.extend)
    sent.wait()
    assert seen == batch and sent.event is None
    assert all(i.tensor is t for i, t in zip(batch, tensors, strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_batch_is_copied_on_its_own_stream() -> None:
    """Pinned, non_blocking, on the feeder's stream (where the decode step runs too); after
    ``wait`` the compute stream reads the same values."""
    device = torch.device("cuda")
    batch = images(3) + images(1, "cuda")
    host = [image.tensor.clone() for image in batch]  # type: ignore[union-attr]
    feeder, streams = Feeder(device), []
    sent = feeder.send(batch, lambda _: streams.append(torch.cuda.current_stream()))
    assert streams == [feeder.stream]
    sent.wait()
    for image, want in zip(batch, host, strict=True):
        assert image.tensor is not None and image.tensor.is_cuda
        assert torch.equal(image.tensor.cpu(), want.cpu())


@pytest.mark.parametrize(
    "methods",
    [("fdcam", "gradcam", "gradcampp", "xgradcam", "layercam", "ablationcam"), ("groupcam",),
     ("fgcam",)],
)  # fmt: skip
def test_host_waits_per_batch_not_per_image(squeezenet: LoadedModel, methods: tuple) -> None:
    """The job's pass over a batch (backbone, every method, the host copies: one per tensor)
    waits for the device as often for 4 images as for 1. Score-CAM (no waits in its code) is
    left out: 512 forward passes an image are too slow for a test on the CPU."""
    explainer = Explainer(squeezenet, list(methods))
    counts = []
    for count in (1, 4):
        with CountSyncs() as syncs:
            job_rows.explain_usable(explainer, [(i, None) for i in images(count)], False)
        counts.append(syncs.count)
    assert counts[0] == counts[1], counts


def test_rows_are_written_while_the_next_batch_is_explained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first batch's rows wait (up to a minute) for the second batch's explanation to
    start: they can only see it start if the writer runs beside the model, not after it."""
    write_images(tmp_path / "images", 4)
    second = threading.Event()
    calls, overlapped = [0], []
    explain, build = job_rows.explain_batch, job_rows.batch_rows

    def explain_batch(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] == 2:
            second.set()
        return explain(*args, **kwargs)

    def batch_rows(*args, **kwargs):  # type: ignore[no-untyped-def]
        overlapped.append(second.wait(timeout=60))
        return build(*args, **kwargs)

    monkeypatch.setattr(job_rows, "explain_batch", explain_batch)
    monkeypatch.setattr(job_rows, "batch_rows", batch_rows)
    summary = run_job(JobConfig(input=tmp_path / "images", output=tmp_path / "out",
                                model="squeezenet1_1", methods=("gradcam",), batch_size=2,
                                part_size=1, progress=False, workers=1))  # fmt: skip
    assert (summary.done, summary.failed) == (4, 0)
    assert overlapped == [True, True]
    assert len(pq.read_table(tmp_path / "out")) == 4
