"""The "startup" bench suite: how long ``fdpipe --help`` and ``--version`` take, as a ratio to
``python -c "import torch"`` (the command line imports torch only when a command runs)."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # bench.py imports this module to register the suite
    from fdpipe.bench import Settings

TARGET_RATIO = 0.3  # the bound for --help against importing torch


def fdpipe_command() -> list[str]:
    """The installed ``fdpipe`` script next to this interpreter, as users run it."""
    script = Path(sys.executable).parent / "fdpipe"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "fdpipe"]


def wall_seconds(command: list[str], repeats: int) -> float:
    """Median wall time of ``repeats`` runs, after one warm-up run (file cache)."""
    subprocess.run(command, check=True, capture_output=True)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def startup_suite(settings: Settings) -> dict[str, object]:
    torch_seconds = wall_seconds([sys.executable, "-c", "import torch"], settings.repeats)
    rows: list[dict[str, object]] = [
        {"command": 'python -c "import torch"', "seconds": torch_seconds, "ratio_to_torch": 1.0}
    ]
    for args in (["--help"], ["--version"], ["explain", "--help"]):
        seconds = wall_seconds([*fdpipe_command(), *args], settings.repeats)
        rows.append(
            {
                "command": " ".join(["fdpipe", *args]),
                "seconds": seconds,
                "ratio_to_torch": seconds / torch_seconds,
            }
        )
    ratio = max(float(row["ratio_to_torch"]) for row in rows[1:])  # type: ignore[arg-type]
    return {
        "rows": rows,
        "targets_met": {f"help_under_{TARGET_RATIO}_of_torch": ratio < TARGET_RATIO},
    }


__all__ = ["TARGET_RATIO", "startup_suite", "wall_seconds"]
