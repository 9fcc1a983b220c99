"""Run records (issue 19, items 2 and 14): every run that knows its output leaves a record with
its real end (``complete``, ``refused``, ``interrupted``, ``failed``), and ``--summary`` is always
rewritten, so that monitoring never reads last night's success on a night when nothing ran."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from fdpipe.cli import main
from image_files import explain_command, write_images
from results import commit_versions, run_metadata


def records(output: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((output / "_runs").glob("*.json"))]


@pytest.fixture
def done_once(tmp_path: Path) -> tuple[Path, Path, Path]:
    """An output explained once, with its ``--summary`` saying complete."""
    images, output, summary = tmp_path / "images", tmp_path / "out", tmp_path / "last.json"
    write_images(images, 2)
    result = CliRunner().invoke(main, explain_command(images, output, "--summary", str(summary)))
    assert result.exit_code == 0 and json.loads(summary.read_text())["status"] == "complete"
    return images, output, summary


@pytest.mark.parametrize(
    ("extra", "env", "reason"),
    [
        (["--layer", "features.9"], {}, "layer"),  # refused by the job: another layer
        ([], {"FDPIPE_EXPLAIN_MAX_PIXELS": "many"}, "max-pixels"),  # refused while parsing
        (["--classes", "1", "--top-k", "2"], {}, "--classes"),  # refused by the command
    ],
)
def test_a_refused_run_records_why_and_rewrites_the_summary(
    done_once: tuple[Path, Path, Path], extra: list[str], env: dict[str, str], reason: str
) -> None:
    images, output, summary = done_once
    args = explain_command(images, output, "--summary", str(summary), *extra)
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 2, result.output
    last = json.loads(summary.read_text())
    assert last["status"] == "refused" and last["exit_code"] == 2
    assert reason in last["error"] and last["output"] == str(output)
    assert records(output)[-1] == last and len(records(output)) == 2
    assert last["run_id"] > records(output)[0]["run_id"]  # the newest record sorts last


def test_a_refusal_without_an_output_still_rewrites_the_summary(
    done_once: tuple[Path, Path, Path],
) -> None:
    images, _, summary = done_once
    result = CliRunner().invoke(main, ["explain", "-i", str(images), "--summary", str(summary)])
    assert result.exit_code == 2
    last = json.loads(summary.read_text())
    assert last["status"] == "refused" and "--output" in last["error"]


# Runs the CLI with ``fdpipe.job.rows.explain_batch`` wrapped: its second call sends the process
# a signal (or raises), as a Ctrl-C, a ``kill`` or a bug would in the middle of a run.
CHILD = """
import os, signal, sys
import fdpipe.job.rows as rows
what = sys.argv[1]
original = rows.explain_batch
calls = [0]
def wrapped(*args, **kwargs):
    calls[0] += 1
    if calls[0] == 2:
        if what == "crash":
            raise RuntimeError("a bug")
        os.kill(os.getpid(), getattr(signal, what))
    return original(*args, **kwargs)
rows.explain_batch = wrapped
from fdpipe.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize(
    ("what", "code", "status"),
    [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "interrupted"), ("crash", 1, "failed")],
)
def test_an_interrupted_or_crashed_run_records_how_it_ended(
    tmp_path: Path, what: str, code: int, status: str
) -> None:
    images, output, summary = tmp_path / "images", tmp_path / "out", tmp_path / "last.json"
    write_images(images, 6)
    args = explain_command(images, output, "--summary", str(summary))
    done = subprocess.run(
        [sys.executable, "-c", CHILD, what, *args], capture_output=True, timeout=300
    )
    assert done.returncode == code, done.stderr.decode()[-2000:]
    (record,) = records(output)
    assert record["status"] == status and record["exit_code"] == code
    assert json.loads(summary.read_text()) == record
    if what == "crash":
        assert "a bug" in record["error"]
    # the first batch's part is kept, nothing half-written is
    assert record["commits"] == commit_versions(output)
    assert done.returncode != 143 or signal.SIGTERM == 15


@pytest.mark.parametrize(
    ("layer", "method", "heads"),
    [
        ("features.12", "fdcam", "torch-factorised"),  # a classifier head: factorised
        ("features.11", "ablationcam", "torch-explicit"),  # a Fire module after the cut: no plan
        ("features.12", None, "none"),  # Grad-CAM alone scores no masks
    ],
)
def test_the_record_names_the_masked_head_path_that_ran(
    tmp_path: Path, layer: str, method: str | None, heads: str
) -> None:
    """Issue 19 item 3: ``run.backend`` (record and commit metadata) says what scored the masks,
    not what was chosen before a plan was made for the layer."""
    images, output = tmp_path / "images", tmp_path / "out"
    write_images(images, 1)
    args = explain_command(
        images, output, "--layer", layer, *(["--method", method] if method else [])
    )
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    (record,) = records(output)
    assert f" head-scores={heads} " in record["run"]["backend"]
    assert run_metadata(output)["run"] == record["run"]  # type: ignore[index]
    assert record["run"]["selected"].startswith("backbone=torch head-scores=torch-factorised")


def test_the_preprocessing_in_effect_is_logged_and_recorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 19, item 7: one line at the start of every run, and in its record."""
    images, output = tmp_path / "images", tmp_path / "out"
    write_images(images, 2)
    extra = ("--resize", "crop", "--crop-fraction", "0.8", "--input-size", "96", "--mean", "0.5")
    with caplog.at_level(logging.INFO, logger="fdpipe"):
        result = CliRunner().invoke(main, explain_command(images, output, *extra))
    assert result.exit_code == 0, result.output
    line = (
        "resize crop to 96x96 (centre crop, 0.8 of the shorter side), PIL bilinear, "
        "3 channel(s), "
        "mean 0.5,0.5,0.5, std 0.00392157,0.00392157,0.00392157 (custom, BGR)"
    )  # squeezenet1_1's caffe statistics (std 1 on 0..255), the mean overridden on [0, 1]
    assert f"preprocessing: {line}" in caplog.text
    assert records(output)[-1]["preprocessing"] == line
