"""The "report" bench suite: ``fdpipe report`` rows/s and peak RSS, on synthetic rows.

The rows are written with the job's own rows stage and sink (``batch_rows``,
``ResultsTable.commit``): two methods with 13 x 13 maps per image over JPEG crops of the bundled
photos, so that the report decodes real images. Each report runs in a fresh process that prints
its own peak RSS: at 1,000 and at 10,000 rows (flat memory means the two are close), then the
10,000-row report again, where every thumbnail is reused (the incremental case); first the peak of
``fdpipe report --help``, the imports alone, for scale. Seconds include the process start.
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np
from fdpipe.bench.pipeline import fdpipe_reporting_peak, write_dataset
from fdpipe.job.decode import DecodedImage
from fdpipe.job.rows import HostExplanation, RowFormat, batch_rows
from fdpipe.job.schema import ImageInfo, RunStamp
from fdpipe.job.table import ResultsTable

if TYPE_CHECKING:  # bench/__init__.py imports this module to register the suite
    from fdpipe.bench import Settings

METHODS = ("gradcam", "layercam")
ROW_COUNTS = (1_000, 10_000)
PART_IMAGES = 256


def write_synthetic_output(
    output: Path,
    images: Path,
    names: list[str],
    *,
    failed: dict[str, str] | None = None,
    methods: tuple[str, ...] = METHODS,
    top_k: int = 1,
    map_size: int = 13,
    seed: int = 0,
    run_id: str = "20261122T000000.000000Z-000000",
    image_size: tuple[int, int] = (64, 48),
    map_box: tuple[float, float, float, float] | None = None,
) -> None:
    """An ``explain`` output for the image files ``names`` under ``images``: one row per
    (image, method, class) with random maps, or one failed row with the reason in ``failed``;
    a later ``run_id`` adds rows that supersede an earlier run's (as a rerun does). The images
    are recorded as ``image_size`` (width, height); ``map_box``: the part of each that the maps
    cover (as ``--resize crop`` records it)."""
    failed = failed or {}
    stamp = RunStamp(run_id, f"top-{top_k}")
    rng = np.random.default_rng(seed)
    table = ResultsTable(output)
    metadata = {
        "params": {"model": "synthetic", "methods": list(methods), "top_k": top_k},
        "versions": {"fdpipe": "bench"},
        "run": {"input_root": str(images), "engine": "synthetic", "run_id": run_id},
    }
    class_names = [f"class {i}" for i in range(1000)]
    box = None if map_box is None else lambda width, height: map_box
    form = RowFormat("synthetic", "features", class_names, stamp, box)
    for start in range(0, len(names), PART_IMAGES):
        chunk = names[start : start + PART_IMAGES]
        decoded = [
            DecodedImage(
                ImageInfo(name, hashlib.sha256(name.encode()).hexdigest(), *image_size),
                None,
                failed.get(name),
                0.001 if name in failed else 0.0,
            )
            for name in chunk
        ]
        count = len(chunk) - sum(name in failed for name in chunk)
        chosen = [rng.choice(1000, size=top_k, replace=False) for _ in range(count)]
        classes = np.array(chosen, dtype=np.int64).reshape(count, top_k)
        probabilities = np.sort(rng.dirichlet(np.ones(top_k + 1), size=count), axis=1)[:, ::-1]
        probabilities = np.ascontiguousarray(probabilities[:, :top_k], dtype=np.float32)
        explained = []
        for method in methods:
            native = rng.random((count, top_k, map_size, map_size), dtype=np.float32)
            native /= native.max(axis=(2, 3), keepdims=True)
            host = HostExplanation(
                method, classes, np.log(probabilities), probabilities, native, None, None
            )
            host.seconds = float(rng.uniform(0.005, 0.05))
            explained.append(host)
        table.commit(batch_rows(form, decoded, explained), metadata)


def report_in_child(*arguments: str) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of ``fdpipe report ARGUMENTS`` in a fresh process."""
    args = fdpipe_reporting_peak("report", *arguments)
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - started
    return seconds, int(done.stdout.rsplit("peak_kib=", 1)[1]) / 1024


def report_suite(settings: Settings) -> dict[str, object]:
    """Rows/s and peak RSS of ``fdpipe report`` at 1,000 and 10,000 rows, then a rerun."""
    _, imports = report_in_child("--help")  # the command's imports alone (torch among them)
    rows: list[dict[str, object]] = [
        {"case": "imports", "model": "-", "runner": "report --help", "peak_rss_mb": imports}
    ]
    click.echo(f"  imports alone: peak RSS {imports:.0f} MB")
    with tempfile.TemporaryDirectory(prefix="fdpipe-bench-report-") as scratch:
        work = Path(scratch)
        most = max(ROW_COUNTS) // len(METHODS)
        images = write_dataset(work / f"images-{most}", most)
        for count in ROW_COUNTS:
            names = [f"{i:05d}.jpg" for i in range(count // len(METHODS))]
            output = work / f"rows-{count}"
            write_synthetic_output(output, images, names)
            runs = ["first"] if count != max(ROW_COUNTS) else ["first", "rerun"]
            for run in runs:
                seconds, peak = report_in_child(str(output), "-o", str(work / f"site-{count}"))
                rows.append(
                    {
                        "case": f"report_{run}",
                        "model": "synthetic",
                        "runner": run,
                        "rows": count,
                        "images": len(names),
                        "seconds": seconds,
                        "rows_per_second": count / seconds,
                        "peak_rss_mb": peak,
                    }
                )
                click.echo(
                    f"  {count} rows, {run} report: {count / seconds:.0f} rows/s, "
                    f"peak RSS {peak:.0f} MB"
                )
    return {"rows": rows}


__all__ = ["METHODS", "ROW_COUNTS", "report_in_child", "report_suite", "write_synthetic_output"]
