"""The "pipeline" bench suite: end-to-end images/s per model and engine, and peak memory vs N.

Throughput runs the whole job (decode, preprocess, explain, Parquet) on JPEG crops of the
bundled photos; the model load is not counted. Peak memory runs ``fdpipe explain`` in a fresh
process on 100 and on 2,000 images (SqueezeNet, Grad-CAM: a cheap method, so that the 2,000-image
run stays short) and reads that process's peak RSS.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np
import torch
from fdpipe.demo import PHOTOS
from fdpipe.export.request import ModelRequest
from fdpipe.job.config import JobConfig
from fdpipe.job.run import run_job
from PIL import Image

if TYPE_CHECKING:  # bench.py imports this module to register the suite
    from fdpipe.bench import Settings

# (model, real weights?, images, method): VGG16 with seeded random weights (no download)
THROUGHPUT = (("squeezenet1_1", True, 64, "fdcam"), ("vgg16", False, 16, "fdcam"))
MEMORY_SIZES = (100, 2000)
MEMORY_METHOD = "gradcam"


def write_dataset(directory: Path, count: int, size: tuple[int, int] = (320, 240)) -> Path:
    """``count`` distinct JPEGs: random crops of the bundled photos (reused if already there)."""
    directory.mkdir(parents=True, exist_ok=True)
    if len(list(directory.glob("*.jpg"))) == count:
        return directory
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(load()).convert("RGB") for load in PHOTOS.values()]
    for i in range(count):
        photo = photos[i % len(photos)]
        width = int(rng.integers(photo.width // 2, photo.width))
        height = int(rng.integers(photo.height // 2, photo.height))
        left = int(rng.integers(0, photo.width - width + 1))
        top = int(rng.integers(0, photo.height - height + 1))
        crop = photo.crop((left, top, left + width, top + height)).resize(size)
        crop.save(directory / f"{i:05d}.jpg", quality=90)
    return directory


def throughput(work: Path, engine: str) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for model, pretrained, count, method in THROUGHPUT:
        config = JobConfig(
            input=write_dataset(work / f"images-{count}", count),
            output=work / "out",
            model=ModelRequest(model, pretrained=pretrained),
            methods=(method,),
            batch_size=16,
            overwrite=True,
            engine=engine,
            progress=False,
        )
        summary = run_job(config)
        rows.append(
            {
                "case": "throughput",
                "model": model,
                "weights": "imagenet" if pretrained else "random",
                "runner": engine,
                "method": method,
                "images": count,
                "seconds": summary.seconds,
                "images_per_second": summary.images_per_second,
                "seconds_per_image": 1.0 / summary.images_per_second,
            }
        )
        click.echo(f"  {model} {engine}: {summary.images_per_second:.2f} images/s")
    return rows


PEAK_CHILD = (
    "import atexit, pathlib, runpy, sys\n"
    "def peak():\n"
    "    status = pathlib.Path('/proc/self/status').read_text().splitlines()\n"
    "    print('peak_kib=' + next(l.split()[1] for l in status if l.startswith('VmHWM')))\n"
    "atexit.register(peak)\n"
    "runpy.run_module('fdpipe', run_name='__main__', alter_sys=True)\n"
)  # ``python -m fdpipe`` that prints its own peak RSS on the way out


def fdpipe_reporting_peak(*arguments: str) -> list[str]:
    """The command line of a fresh ``python -m fdpipe ARGUMENTS`` that prints ``peak_kib=N``.

    /proc's VmHWM belongs to the process image: unlike ``ru_maxrss`` it does not inherit the
    parent's peak across fork + exec.
    """
    return [sys.executable, "-c", PEAK_CHILD, *arguments]


def peak_memory(work: Path, count: int) -> dict[str, object]:
    """Peak RSS of a fresh ``fdpipe explain`` process over ``count`` images."""
    images = write_dataset(work / f"images-{count}", count)
    args = [
        *fdpipe_reporting_peak("explain"),
        "-i", str(images), "-o", str(work / f"memory-{count}"), "--overwrite", "--no-progress",
        "--model", "squeezenet1_1", "--method", MEMORY_METHOD, "--batch-size", "16",
    ]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    peak_kib = int(done.stdout.rsplit("peak_kib=", 1)[1])
    return {
        "case": "peak_memory",
        "model": "squeezenet1_1",
        "method": MEMORY_METHOD,
        "runner": "local",
        "images": count,
        "peak_rss_mb": peak_kib / 1024,
    }


def pipeline_suite(settings: Settings) -> dict[str, object]:
    """Images/s per model and engine, then peak RSS at 100 and 2,000 images."""
    torch.set_num_threads(settings.threads)
    with tempfile.TemporaryDirectory(prefix="fdpipe-bench-pipeline-") as scratch:
        work = Path(scratch)
        rows = throughput(work, "local")
        import ray  # optional dependency, installed with the test extras

        ray.init(num_cpus=settings.threads, include_dashboard=False, log_to_driver=False)
        try:
            rows += throughput(work, "ray")
        finally:
            ray.shutdown()
        for count in MEMORY_SIZES:
            rows.append(peak_memory(work, count))
            click.echo(f"  peak RSS at {count} images: {rows[-1]['peak_rss_mb']:.0f} MB")
    peaks = {row["images"]: row["peak_rss_mb"] for row in rows if row["case"] == "peak_memory"}
    return {"rows": rows, "peak_rss_mb_by_images": peaks}


__all__ = [
    "MEMORY_SIZES",
    "THROUGHPUT",
    "fdpipe_reporting_peak",
    "peak_memory",
    "pipeline_suite",
    "throughput",
    "write_dataset",
]
