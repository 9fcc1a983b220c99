"""Fault injection: a run SIGKILLed at several points, then resumed, equals an uninterrupted run.

The child process is the real CLI with one function wrapped so that it kills the process at the
chosen moment: during the first batch (nothing committed yet), just before a part's commit, when
a part's data file was written but its commit was not (an orphan file), and right after a commit
whose data file is then torn (a damaged file the table refers to).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fdpipe.job.config import JobConfig
from fdpipe.job.run import run_job
from image_files import write_images
from results import stored_rows

# Wraps ``module.name`` so that its ``count``-th call SIGKILLs the process: before the call,
# after it, with an uncommitted copy of the table's newest data file beside it ("orphan"), or
# after it with the newest data file cut in half ("torn"); then runs the CLI.
CHILD = """
import glob, os, shutil, signal, sys, importlib
module, name, count, when = sys.argv[1:5]
target = importlib.import_module(module)
original = getattr(target, name)
calls = [0]
def newest_data_file(table):
    return max(glob.glob(os.path.join(str(table), "part-*.parquet")), key=os.path.getmtime)
def wrapped(*args, **kwargs):
    calls[0] += 1
    if calls[0] == int(count) and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    if calls[0] == int(count) and when == "orphan":
        orphan = os.path.join(str(args[0]), "part-00000-orphan.parquet")
        shutil.copy(newest_data_file(args[0]), orphan)
        os.kill(os.getpid(), signal.SIGKILL)
    result = original(*args, **kwargs)
    if calls[0] == int(count) and when == "torn":
        path = newest_data_file(args[0])
        with open(path, "rb+") as fh:
            fh.truncate(os.path.getsize(path) // 2)
        os.kill(os.getpid(), signal.SIGKILL)
    if calls[0] == int(count) and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)
    return result
setattr(target, name, wrapped)
from fdpipe.cli import main
sys.exit(main(sys.argv[5:]))
"""

KILL_POINTS = [
    ("fdpipe.job.rows", "explain_batch", 1, "before"),  # first batch, nothing committed
    ("deltalake", "write_deltalake", 2, "before"),  # second part ready, not committed
    ("deltalake", "write_deltalake", 2, "orphan"),  # a data file written, its commit not
    ("deltalake", "write_deltalake", 1, "torn"),  # a committed data file torn afterwards
    ("deltalake", "write_deltalake", 1, "after"),  # a part committed, the run killed
]


def explain_args(images: Path, output: Path) -> list[str]:
    return ["explain", "-i", str(images), "-o", str(output), "--model", "squeezenet1_1",
            "--method", "gradcam", "--batch-size", "1", "--part-size", "1", "--workers", "1",
            "--no-progress"]  # fmt: skip


def sorted_rows(output: Path) -> list[dict]:
    return sorted(stored_rows(output).to_pylist(), key=lambda row: row["image_path"])


@pytest.mark.slow
def test_killed_at_each_point_then_resumed_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    images = tmp_path / "images"
    write_images(images, 6)
    output = tmp_path / "killed"
    for module, name, count, when in KILL_POINTS:
        child = [sys.executable, "-c", CHILD, module, name, str(count), when]
        done = subprocess.run(
            [*child, *explain_args(images, output)], timeout=300, capture_output=True
        )
        assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    resumed = run_job(JobConfig(input=images, output=output, model="squeezenet1_1",
                                methods=("gradcam",), batch_size=1, part_size=1))  # fmt: skip
    assert resumed.done + resumed.skipped == 6 and resumed.done > 0
    assert list(output.glob(".part-*.unreadable"))  # the torn file, set aside and redone
    fresh = tmp_path / "fresh"
    run_job(JobConfig(input=images, output=fresh, model="squeezenet1_1", methods=("gradcam",),
                      batch_size=1))  # fmt: skip
    killed_rows, fresh_rows = sorted_rows(output), sorted_rows(fresh)
    assert [r["image_path"] for r in killed_rows] == [r["image_path"] for r in fresh_rows]
    for a, b in zip(killed_rows, fresh_rows, strict=True):
        assert (a["status"], a["class_index"]) == (b["status"], b["class_index"])
        np.testing.assert_allclose(a["map"], b["map"], atol=1e-5)  # other thread counts
