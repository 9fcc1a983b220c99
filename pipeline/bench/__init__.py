"""``fdpipe bench`` suites: each returns JSON data with a "rows" table, measured in one run.

"runners": FD-CAM seconds per image per runner against the plain masked-head loop and the
grad-cam library (``runners.py``); "pipeline": end-to-end images/s of the dataset job and its
peak memory (``pipeline.py``); "startup": ``fdpipe --help`` against importing torch
(``startup.py``); "fidelity": bf16/fp16 maps against fp32 per model and method
(``fidelity.py``); "precision": FD-CAM seconds per image per precision beside the fp32 floor,
API and job (``precision.py``); "report": ``fdpipe report`` rows/s and peak RSS
(``report_suite.py``); "evaluation": (image, method) pairs per second of each evaluation metric
against scoring one pair per call (``evaluation_suite.py``); "reader": stored maps read back for
``render`` and ``evaluate --maps`` against per-row decoding (``reader_suite.py``); "memory":
peak RSS and seconds per method on EfficientNet-Lite0, each in its own process
(``memory_suite.py``); "sources": the job's images/s from a loopback S3 server, WebDataset shards
and a Parquet image table against a local directory, identical maps (``sources_suite.py``);
"table": the results table's size after ten reruns, compact and vacuum against a clean run, and
``fdpipe status`` over 8 shards (``table_suite.py``); "transformers": FD-CAM against Score-CAM and
Ablation-CAM on ViT-Tiny, and on Swin-T without Score-CAM, seconds per image and ratios
(``transformers_suite.py``); "feed": the job's reader with 2 decode workers against 1,
and the job's cost per extra image against the API's (``feed_suite.py``).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort
import torch
from fdpipe.bench.evaluation_suite import evaluation_suite
from fdpipe.bench.feed_suite import feed_suite
from fdpipe.bench.fidelity import fidelity_suite
from fdpipe.bench.memory_suite import memory_suite
from fdpipe.bench.pipeline import pipeline_suite
from fdpipe.bench.precision import precision_suite
from fdpipe.bench.reader_suite import reader_suite
from fdpipe.bench.report_suite import report_suite
from fdpipe.bench.runners import BATCH, runners_suite
from fdpipe.bench.sources_suite import sources_suite
from fdpipe.bench.startup import startup_suite
from fdpipe.bench.table_suite import table_suite
from fdpipe.bench.transformers_suite import transformers_suite
from fdpipe.export.tensorrt import tensorrt_missing


@dataclass(frozen=True)
class Settings:
    output: Path
    repeats: int  # timed images per configuration (after one warm-up)
    threads: int


Suite = Callable[[Settings], dict[str, object]]  # returns JSON data with a "rows" table
SUITES: dict[str, Suite] = {
    "runners": runners_suite,
    "pipeline": pipeline_suite,
    "report": report_suite,
    "reader": reader_suite,
    "startup": startup_suite,
    "fidelity": fidelity_suite,
    "precision": precision_suite,
    "evaluation": evaluation_suite,
    "memory": memory_suite,
    "sources": sources_suite,
    "table": table_suite,
    "transformers": transformers_suite,
    "feed": feed_suite,
}


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name and whether it has native bf16 (AVX-512 BF16, AMX): what a CPU
    figure is read against."""
    if not cpuinfo.is_file():
        return platform.processor() or platform.machine()
    lines = cpuinfo.read_text(errors="replace").splitlines()
    name = next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), "")
    flags = next((x.split(":", 1)[1].split() for x in lines if x.startswith("flags")), [])
    native = [flag for flag in ("avx512_bf16", "amx_bf16") if flag in flags]
    return f"{name or platform.machine()} ({', '.join(native) or 'no native bf16'})"


def machine(threads: int) -> dict[str, object]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": threads,
        "load_average_at_start": os.getloadavg(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "tensorrt": tensorrt_missing() or "available",
    }


RUNNER_COLUMNS = [
    "model",
    "runner",
    "seconds_per_image",
    f"seconds_per_image_batch{BATCH}",
    "head_evals_per_second",
    "rows_per_second",
    "peak_rss_mb",
]


FINE = ("map_r", "spearman", "auc_change")  # fidelity figures: differences near 1 or 0


def _cell(column: str, value: object) -> str:
    """Floats to 3 decimals, fidelity figures to 5."""
    if isinstance(value, float):
        return f"{value:.5f}" if any(k in column for k in FINE) else f"{value:.3f}"
    return "" if value is None else str(value)


def table(rows: list[dict[str, object]], columns: list[str] | None = None) -> str:
    """``columns`` (a suite's own), else the runner columns where the rows have them, else the
    first row's keys."""
    by_runner = any("runner" in r for r in rows)
    columns = columns or (RUNNER_COLUMNS if by_runner or not rows else list(rows[0]))
    cells = [[_cell(c, r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = [" ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += [" ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


__all__ = ["SUITES", "Settings", "Suite", "cpu_model", "machine", "table"]
