"""The "feed" bench suite: does the dataset job keep the model fed on the CPU?

Two rows, each a ratio against a peer measured in the same run, in alternating rounds (the order
flips every round, so load from other processes falls on both alike), medians over rounds, with
CPU seconds beside wall seconds and the load average before and after (a figure read under a
load above the core count says little about scaling):

- ``reader``: the job's reader (``fdpipe.job.decode``: read, hash, decode, preprocess, in order,
  bounded ahead) over ``READER_IMAGES`` JPEGs with 2 decode workers against 1, torch at one
  thread per worker. Target: >= ``READER_TARGET``x on a 2-core machine.
- ``marginal``: the job's cost per extra image against the API's (``Explainer`` on the same
  images already decoded and preprocessed, in memory), VGG16 (seeded random weights), FD-CAM,
  batches of ``BATCH``: per round, the least-squares slope of seconds over ``SIZES`` images, so
  that what a run pays once (model loading, the backend, the first batch's warm-up) cancels and
  no single difference of two noisy runs decides. Target: job / API <= ``MARGINAL_TARGET``.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import click
import torch
from fdpipe.api import Explainer
from fdpipe.bench.pipeline import write_dataset
from fdpipe.export.loading import load_model
from fdpipe.export.request import ModelRequest
from fdpipe.job.config import JobConfig
from fdpipe.job.decode import decode, ordered_map
from fdpipe.job.inputs import FileSource
from fdpipe.job.run import run_job

if TYPE_CHECKING:  # the package imports this module to register the suite
    from fdpipe.bench import Settings

READER_IMAGES = 192
READER_SIZE = (640, 480)  # a typical photo: decode and resize dominate, not the thread hand-off
READER_ROUNDS = 5
READER_TARGET = 1.8
MODEL = "vgg16"
BATCH = 4
SIZES = (BATCH, 2 * BATCH, 3 * BATCH)
MARGINAL_ROUNDS = 3
MARGINAL_TARGET = 1.05


def _clocked(work: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds, all threads) of ``work()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def slope(sizes: tuple[int, ...], seconds: list[float]) -> float:
    """Least-squares seconds per image of ``seconds`` measured at ``sizes`` images."""
    mean_n, mean_s = statistics.fmean(sizes), statistics.fmean(seconds)
    spread = sum((n - mean_n) ** 2 for n in sizes)
    return sum((n - mean_n) * (s - mean_s) for n, s in zip(sizes, seconds, strict=True)) / spread


def reader_row(work: Path) -> dict[str, object]:
    """Images/s of the job's reader with 2 decode workers against 1."""
    images = write_dataset(work / "reader", READER_IMAGES, READER_SIZE)
    source = FileSource(images)
    entries = source.entries()
    preprocess = load_model("squeezenet1_1").preprocess  # resize 256, crop 224, normalise

    def read_all(workers: int) -> None:
        read = lambda entry: decode(entry, source, preprocess)  # noqa: E731 - the job's reader
        for image in ordered_map(read, entries, workers, ahead=2 * 16 + workers):
            assert image.error is None, image.error

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # torch's own threads would blur what the workers add
    load_before = os.getloadavg()
    try:
        read_all(2)  # warm-up: file cache, decoder tables
        timings: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
        for round_ in range(READER_ROUNDS):
            for workers in (1, 2) if round_ % 2 == 0 else (2, 1):
                timings[workers].append(_clocked(partial(read_all, workers)))
    finally:
        torch.set_num_threads(threads)
    wall = {w: statistics.median(t[0] for t in timings[w]) for w in timings}
    cpu = {w: statistics.median(t[1] for t in timings[w]) for w in timings}
    speedup = wall[1] / wall[2]
    click.echo(
        f"  reader: 1 worker {READER_IMAGES / wall[1]:.1f} images/s, 2 workers "
        f"{READER_IMAGES / wall[2]:.1f} ({speedup:.2f}x); CPU/wall {cpu[2] / wall[2]:.2f} cores"
    )
    return {
        "case": "reader",
        "images": READER_IMAGES,
        "image_size": list(READER_SIZE),
        "rounds": READER_ROUNDS,
        "images_per_second_1_worker": READER_IMAGES / wall[1],
        "images_per_second_2_workers": READER_IMAGES / wall[2],
        "speedup": speedup,
        "target": READER_TARGET,
        "cpu_ms_per_image_1_worker": 1e3 * cpu[1] / READER_IMAGES,
        "cpu_ms_per_image_2_workers": 1e3 * cpu[2] / READER_IMAGES,
        # CPU seconds per wall second: how many cores the 2 workers got (2.0 on a quiet machine).
        "cores_used_2_workers": cpu[2] / wall[2],
        "wall_seconds_all": {str(w): [t[0] for t in timings[w]] for w in timings},
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }


def marginal_row(work: Path) -> dict[str, object]:
    """The job's seconds per extra image against the API's, FD-CAM on VGG16."""
    datasets = {n: write_dataset(work / f"marginal-{n}", n) for n in SIZES}
    model = load_model(MODEL, pretrained=False)
    explainer = Explainer(model, "fdcam")
    # The API's input: the same JPEGs, decoded and preprocessed once, outside the clock.
    source = FileSource(datasets[max(SIZES)])
    tensors = torch.stack(
        [decode(e, source, model.preprocess).tensor for e in source.entries()]  # type: ignore[misc]
    )

    def api(count: int) -> None:
        for start in range(0, count, BATCH):
            explainer(tensors[start : min(start + BATCH, count)])

    def job(count: int) -> None:
        config = JobConfig(
            input=datasets[count],
            output=work / f"out-{count}",
            model=ModelRequest(MODEL, pretrained=False),
            methods=("fdcam",),
            batch_size=BATCH,
            overwrite=True,
            progress=False,
        )
        run_job(config)  # model loading included: a constant, the slope cancels it

    paths = {"job": job, "api": api}
    api(BATCH)  # warm-up: the first calls allocate and pick kernels
    load_before = os.getloadavg()
    slopes: dict[str, list[tuple[float, float]]] = {"job": [], "api": []}
    for round_ in range(MARGINAL_ROUNDS):
        for name in ("job", "api") if round_ % 2 == 0 else ("api", "job"):
            clocked = [_clocked(partial(paths[name], n)) for n in SIZES]
            slopes[name].append(
                (slope(SIZES, [c[0] for c in clocked]), slope(SIZES, [c[1] for c in clocked]))
            )
        click.echo(
            f"  marginal round {round_ + 1}: job {slopes['job'][-1][0]:.3f} s/image, "
            f"API {slopes['api'][-1][0]:.3f} (wall)"
        )
    per_round = [j[0] / a[0] for j, a in zip(slopes["job"], slopes["api"], strict=True)]
    per_round_cpu = [j[1] / a[1] for j, a in zip(slopes["job"], slopes["api"], strict=True)]
    return {
        "case": "marginal",
        "model": MODEL,
        "weights": "random",
        "method": "fdcam",
        "batch": BATCH,
        "sizes": list(SIZES),
        "rounds": MARGINAL_ROUNDS,
        "job_seconds_per_image": statistics.median(s[0] for s in slopes["job"]),
        "api_seconds_per_image": statistics.median(s[0] for s in slopes["api"]),
        "ratio": statistics.median(per_round),
        "ratio_per_round": per_round,
        "job_cpu_seconds_per_image": statistics.median(s[1] for s in slopes["job"]),
        "api_cpu_seconds_per_image": statistics.median(s[1] for s in slopes["api"]),
        "ratio_cpu": statistics.median(per_round_cpu),
        "target": MARGINAL_TARGET,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }


def feed_suite(settings: Settings) -> dict[str, object]:
    torch.set_num_threads(settings.threads)
    with tempfile.TemporaryDirectory(prefix="fdpipe-bench-feed-") as scratch:
        rows = [reader_row(Path(scratch))]
        rows.append(marginal_row(Path(scratch)))
    reader, marginal = rows
    click.echo(
        f"  job / API per extra image: {marginal['ratio']:.3f} (wall), "
        f"{marginal['ratio_cpu']:.3f} (CPU)"
    )
    return {
        "rows": rows,
        "targets_met": {
            f"reader_{READER_TARGET:g}x": float(reader["speedup"]) >= READER_TARGET,  # type: ignore[arg-type]
            f"marginal_{MARGINAL_TARGET:g}x": float(marginal["ratio"]) <= MARGINAL_TARGET,  # type: ignore[arg-type]
        },
    }


__all__ = [
    "BATCH",
    "MARGINAL_TARGET",
    "READER_TARGET",
    "SIZES",
    "feed_suite",
    "marginal_row",
    "reader_row",
    "slope",
]
