"""``fdpipe bench``: run benchmark suites, write one JSON file per suite, print a table."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import click

SUITE_NAMES = (
    "runners",
    "pipeline",
    "report",
    "reader",
    "startup",
    "fidelity",
    "precision",
    "evaluation",
    "memory",
    "sources",
    "table",
    "transformers",
    "feed",
)  # bench.SUITES
RENAMED = {"engine": "runners"}  # earlier suite names, still accepted with a warning


@click.command("bench")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=Path("bench-results"),
    show_default=True,
    help="Results directory (one JSON file per suite).",
)
@click.option(
    "--suite",
    "suites",
    type=click.Choice([*SUITE_NAMES, *RENAMED]),
    multiple=True,
    help="Suites to run (repeatable); default: all.",
)
@click.option("--repeats", type=click.IntRange(min=1), default=7, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=os.cpu_count(), show_default=True)
def bench(output: Path, suites: tuple[str, ...], repeats: int, threads: int) -> None:
    """Benchmark fdpipe; writes OUTPUT/<suite>.json and prints a table."""
    import fdpipe.bench as benchmarks  # torch and the suites load only when benchmarks run

    settings = benchmarks.Settings(output, repeats, threads)
    output.mkdir(parents=True, exist_ok=True)
    for asked in suites or benchmarks.SUITES:
        name = RENAMED.get(asked, asked)
        if name != asked:
            click.echo(f"--suite {asked} is deprecated: use --suite {name}", err=True)
        click.echo(f"suite {name}:")
        started = time.perf_counter()
        result: dict[str, Any] = {
            "suite": name,
            "machine": benchmarks.machine(threads),
            **benchmarks.SUITES[name](settings),
        }
        result["wall_seconds"] = time.perf_counter() - started
        result["machine"]["load_average_at_end"] = os.getloadavg()
        (output / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        click.echo(benchmarks.table(result["rows"], result.get("columns")))
        for key in ("vgg16", "targets_met", "curves_speedup_over_one_per_call", "checks"):
            if key in result:
                click.echo(f"{key}: {json.dumps(result[key])}")
        click.echo(f"wrote {output / f'{name}.json'}")
