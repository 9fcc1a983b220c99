"""``fdpipe bench`` suites: each returns JSON data with a "rows" table, measured in one run.

"engine": FD-CAM seconds per image per runner against the plain masked-head loop and the grad-cam
library (``engine.py``); "pipeline": end-to-end images/s of the dataset job and its peak memory
(``pipeline.py``).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort
import torch
from fdpipe.bench.engine import BATCH, engine_suite
from fdpipe.bench.pipeline import pipeline_suite
from fdpipe.export.tensorrt import tensorrt_missing


@dataclass(frozen=True)
class Settings:
    output: Path
    repeats: int  # timed images per configuration (after one warm-up)
    threads: int


Suite = Callable[[Settings], dict[str, object]]  # returns JSON data with a "rows" table
SUITES: dict[str, Suite] = {"engine": engine_suite, "pipeline": pipeline_suite}


def machine(threads: int) -> dict[str, object]:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": threads,
        "load_average_at_start": os.getloadavg(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "tensorrt": tensorrt_missing() or "available",
    }


def table(rows: list[dict[str, object]]) -> str:
    columns = [
        "model",
        "runner",
        "seconds_per_image",
        f"seconds_per_image_batch{BATCH}",
        "head_evals_per_second",
        "peak_rss_mb",
    ]
    cells = [
        [f"{r[c]:.3f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in columns]
        for r in rows
    ]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = [" ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += [" ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


__all__ = ["SUITES", "Settings", "Suite", "machine", "table"]
