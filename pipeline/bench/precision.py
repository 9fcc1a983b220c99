"""The "precision" bench suite: FD-CAM seconds per image per precision, beside the fp32 floor.

For VGG16 (seeded random weights) and SqueezeNet 1.1, in batches of ``BATCH`` photos, each
precision this machine runs natively (``precision_unsupported``: bf16 needs AVX-512 BF16/AMX or
CUDA, fp16 CUDA; the others are recorded as refused, with the reason) is timed interleaved with
the others, best of ``rounds``, so that load from other processes falls on all alike. Beside
each figure, measured in the same rounds, is the floor of that precision: the backbone pass plus
the masked-head products FD-CAM cannot avoid (the scorer on its 2K switch-on/off masks); the
fraction figure/floor is what the rest (grouping, gradients, maps) costs. The dataset job runs
the same model and method on JPEGs (decode, hash, preprocess, explain, Parquet) in batches of
``BATCH``: its cost per image is the difference between a run on ``JOB_IMAGES`` and one on
``BATCH`` images, over the extra images (best of two each), so that model loading, the backend's
set-up and the first batch's warm-up, which a dataset run pays once, cancel out; it reads
against the API's (steady state, also after a warm-up round) and the same floor.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click
import torch
from fdpipe.api import Explainer
from fdpipe.bench.pipeline import write_dataset
from fdpipe.demo import PHOTOS
from fdpipe.export.loading import load_model
from fdpipe.export.request import ModelRequest
from fdpipe.job.config import JobConfig
from fdpipe.job.run import run_job
from fdpipe.kernels.fdcam import similarity_groups
from fdpipe.kernels.precision import precision_unsupported
from PIL import Image

if TYPE_CHECKING:  # the package imports this module to register the suite
    from fdpipe.bench import Settings

MODELS = (("vgg16", False), ("squeezenet1_1", True))
TIMED_PRECISIONS = ("fp32", "bf16", "fp16")
BATCH = 8
JOB_IMAGES = 16


def _seconds(call: object) -> float:
    """Wall seconds of ``call()``, GPU work included (CUDA runs asynchronously)."""
    synchronize = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None
    synchronize()
    start = time.perf_counter()
    call()  # type: ignore[operator]
    synchronize()
    return time.perf_counter() - start


def _api_round(explainer: Explainer, images: list[Image.Image]) -> tuple[float, float]:
    """(FD-CAM seconds per image, floor seconds per image) of one batch."""
    total = _seconds(lambda: explainer(images))
    batch = explainer.batch(images)
    with torch.no_grad():
        backbone = _seconds(lambda: explainer.network.features(batch))
        state = explainer.prepare(images)
        keep = similarity_groups(state.activations).to(state.activations.dtype)
        masks = torch.cat([keep, 1 - keep], dim=1)  # FD-CAM's 2K masks per image
        head = _seconds(
            lambda: explainer.scorer(state.activations, masks, state.classes, extras=state.extras)
        )
    return total / len(images), (backbone + head) / len(images)


def _job(name: str, real: bool, precision: str, work: Path) -> float:
    """The dataset job's seconds per extra image (module docstring)."""

    def seconds(count: int) -> float:
        config = JobConfig(
            input=write_dataset(work / f"images-{count}", count),
            output=work / f"out-{name}-{precision}-{count}",
            model=ModelRequest(name, pretrained=real),
            methods=("fdcam",),
            batch_size=BATCH,
            precision=precision,
            overwrite=True,
            progress=False,
        )
        return run_job(config).seconds  # the explain loop: model loading is outside

    many, few = (min(seconds(n) for _ in range(2)) for n in (JOB_IMAGES, BATCH))
    return (many - few) / (JOB_IMAGES - BATCH)


def precision_suite(settings: Settings) -> dict[str, object]:
    torch.set_num_threads(settings.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    photos = [Image.fromarray(load()).convert("RGB") for load in PHOTOS.values()]
    images = [photos[i % len(photos)] for i in range(BATCH)]
    rounds = max(2, settings.repeats // 2)
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="fdpipe-bench-precision-") as scratch:
        for name, real in MODELS:
            model = load_model(name, pretrained=real)
            runnable = {}
            for precision in TIMED_PRECISIONS:
                reason = precision_unsupported(precision, device)
                if reason:
                    rows.append({"model": name, "precision": precision, "refused": reason})
                else:
                    runnable[precision] = Explainer(model, "fdcam", precision=precision)
            api: dict[str, list[tuple[float, float]]] = {p: [] for p in runnable}
            for _ in range(rounds + 1):  # interleaved; the first round warms up
                for precision, explainer in runnable.items():
                    api[precision].append(_api_round(explainer, images))
            for precision, timings in api.items():
                seconds = min(t[0] for t in timings[1:])
                floor = min(t[1] for t in timings[1:])
                job = _job(name, real, precision, Path(scratch))
                for path, value in (("api", seconds), ("job", job)):
                    rows.append(
                        {
                            "model": name,
                            "precision": precision,
                            "path": path,
                            "seconds_per_image": value,
                            "floor_seconds_per_image": floor,
                            "fraction_of_floor": value / floor,
                        }
                    )
                    click.echo(
                        f"  {name} {precision} {path}: {value:.3f} s/image, "
                        f"floor {floor:.3f} ({value / floor:.2f}x)"
                    )
    return {
        "columns": [
            "model",
            "precision",
            "path",
            "seconds_per_image",
            "floor_seconds_per_image",
            "fraction_of_floor",
            "refused",
        ],
        "rows": rows,
        "batch": BATCH,
        "job_images": JOB_IMAGES,
        "rounds": rounds,
        "load_average_during": os.getloadavg(),
    }


__all__ = ["BATCH", "JOB_IMAGES", "MODELS", "TIMED_PRECISIONS", "precision_suite"]
