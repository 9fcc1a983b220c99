"""The "memory" bench suite: peak RSS and seconds per method on EfficientNet-Lite0 (real weights,
offline), one batch of the bundled photos, each method in a fresh process.

Every method runs alone in its own ``python`` process, so that its peak RSS (/proc's VmHWM, the
process image's own) is that method's with the model loaded, not the highest of the suite. The
budget (``--max-memory``) is the machine's default.

Score-CAM runs one full forward pass per channel and image: 1,280 per photo here, 20,480 for a
batch of 16, about 14 minutes of one CPU core (40 ms per pass, 2026-12-06, README). It runs on
``SAMPLE`` photos instead (its seconds per image are what scale): its masked inputs are built
and run per image, a chunk at a time, so its peak is set by one image's chunk and does not grow
with the batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:  # bench.py imports this module to register the suite
    from fdpipe.bench import Settings

MODEL = "efficientnet_lite0"
BATCH = 16
METHODS = ("gradcam", "fdcam", "ablationcam", "groupcam", "scorecam")
SAMPLE = {"scorecam": 2}  # photos for the methods a batch of 16 would keep for tens of minutes


def method_reporting_peak() -> None:
    """Child process entry: ``argv`` = method, batch, threads, max_memory (0: default); prints
    JSON with the wall and CPU seconds of one call, the chunks and this process's peak RSS."""
    import torch
    from fdpipe.api import Explainer
    from fdpipe.demo import PHOTOS

    method, batch, threads, max_memory = sys.argv[1], *map(int, sys.argv[2:5])
    torch.set_num_threads(threads)
    explainer = Explainer(MODEL, method, max_memory=max_memory or None)
    photos = list(PHOTOS.values())
    images = [photos[i % len(photos)]() for i in range(batch)]
    start, cpu = time.perf_counter(), time.process_time()
    explainer(images)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    status = Path("/proc/self/status").read_text()
    peak_kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))
    record = {
        "seconds": seconds,
        "cpu_seconds": cpu,  # on a shared machine the wall time is mostly the neighbours' load
        "peak_kib": int(peak_kib),
        **explainer.budget.record(),
    }
    print("result=" + json.dumps(record))


def measure(method: str, batch: int, threads: int, max_memory: int) -> dict[str, object]:
    child = "from fdpipe.bench.memory_suite import method_reporting_peak; method_reporting_peak()"
    args = [sys.executable, "-c", child, method, str(batch), str(threads), str(max_memory)]
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.rsplit("result=", 1)[1])
    return {
        "model": MODEL,
        "method": method,
        "images": batch,
        "seconds": result["seconds"],
        "seconds_per_image": result["seconds"] / batch,
        "cpu_seconds_per_image": result["cpu_seconds"] / batch,
        "peak_rss_mb": result["peak_kib"] / 1024,
        "max_memory_mb": result["max_memory_bytes"] / (1 << 20),
        "chunks": json.dumps(result["chunks"]),
    }


def memory_suite(settings: Settings) -> dict[str, object]:
    """Peak RSS and seconds per method, one batch of ``BATCH`` photos each (``SAMPLE``: fewer)."""
    rows = []
    for method in METHODS:
        rows.append(measure(method, SAMPLE.get(method, BATCH), settings.threads, 0))
        row = rows[-1]
        click.echo(
            f"  {method}: {row['images']} images, {row['seconds']:.1f} s "
            f"({row['cpu_seconds_per_image']:.1f} CPU s/image), "
            f"peak RSS {row['peak_rss_mb']:.0f} MB"
        )
    return {"rows": rows, "batch": BATCH, "sample": SAMPLE, "load_average_after": os.getloadavg()}


__all__ = [
    "BATCH",
    "METHODS",
    "MODEL",
    "SAMPLE",
    "measure",
    "memory_suite",
    "method_reporting_peak",
]
