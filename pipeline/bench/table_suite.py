"""The "table" bench suite: what a nightly job's reruns cost the results table on disk.

A clean run commits 2,000 images (two methods, 13 x 13 maps, synthetic rows through the job's
own rows stage and sink, so no model runs); then ten reruns each explain 10 % of the images
again, as a night with changed files does. The table grows with every rerun (each commit adds
files, the superseded rows' files stay for time travel); ``compact`` then ``vacuum --retain 0h``
bring it back. The row: the folder's bytes after the clean run, after the reruns, after the
upkeep, and the ratio to the clean run (the issue's bound: 1.2). Then ``fdpipe status`` over an
output of 8 shards, from their run records: its answer and seconds.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np
from fdpipe.bench.report_suite import write_synthetic_output
from fdpipe.job.record import RUNS_DIR
from fdpipe.job.status import night_status
from fdpipe.job.table import ResultsTable

if TYPE_CHECKING:  # bench/__init__.py imports this module to register the suite
    from fdpipe.bench import Settings

IMAGES = 2_000
RERUNS = 10
CHANGED = 0.10
BOUND = 1.2  # the issue's: after compact + vacuum, within 1.2x a single clean run
SHARDS = 8


def table_bytes(output: Path) -> int:
    """Bytes of the table's files (data and log; the run records are not the table)."""
    return sum(
        p.stat().st_size
        for p in output.rglob("*")
        if p.is_file() and RUNS_DIR not in p.relative_to(output).parts
    )


def run_id(night: int) -> str:
    return f"202612{night + 1:02d}T020000.000000Z-000000"


def table_suite(settings: Settings) -> dict[str, object]:
    rng = np.random.default_rng(0)
    names = [f"{i:05d}.jpg" for i in range(IMAGES)]
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="fdpipe-bench-table-") as scratch:
        work = Path(scratch)
        output = work / "out"
        write_synthetic_output(output, work, names, run_id=run_id(0))
        clean = table_bytes(output)
        for rerun in range(1, RERUNS + 1):
            changed = sorted(rng.choice(names, size=int(IMAGES * CHANGED), replace=False))
            write_synthetic_output(output, work, changed, run_id=run_id(rerun), seed=rerun)
        grown = table_bytes(output)
        table = ResultsTable(output)
        started = time.perf_counter()
        table.compact({"operation": "compact"})
        table.vacuum(0)
        upkeep = time.perf_counter() - started
        kept = table_bytes(output)
        assert table.rows(columns=["image_path"]).num_rows == IMAGES * 2  # no row lost
        rows.append(
            {
                "case": "reruns",
                "images": IMAGES,
                "reruns": RERUNS,
                "changed_per_rerun": CHANGED,
                "clean_bytes": clean,
                "after_reruns_bytes": grown,
                "after_upkeep_bytes": kept,
                "ratio_to_clean": kept / clean,
                "bound": BOUND,
                "upkeep_seconds": upkeep,
            }
        )
        click.echo(
            f"  {RERUNS} reruns of {CHANGED:.0%}: {grown / clean:.2f}x the clean run, "
            f"after compact + vacuum {kept / clean:.3f}x (bound {BOUND})"
        )
        records = work / "sharded" / RUNS_DIR
        records.mkdir(parents=True)
        for index in range(SHARDS):
            record = {
                "run_id": run_id(20) + f"{index}",
                "started": f"2026-12-21T02:00:0{index}+00:00",
                "shard": [index, SHARDS],
                "status": "complete",
                "exit_code": 1 if index == 3 else 0,
                "counts": {"ok": 250, "failed": 1 if index == 3 else 0},
            }
            (records / f"{record['run_id']}.json").write_text(json.dumps(record))
        started = time.perf_counter()
        night = night_status(work / "sharded")
        seconds = time.perf_counter() - started
        rows.append(
            {
                "case": "status",
                "shards": SHARDS,
                "status": night.state,
                "exit_code": night.exit_code,
                "seconds": seconds,
            }
        )
        click.echo(f"  status over {SHARDS} shards: {night.state} (exit {night.exit_code})")
    return {"rows": rows}


__all__ = ["table_suite"]
