"""Resume: a SIGKILLed run continues without lost or duplicated rows; another model setup is
refused, other methods or classes add rows."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from fdpipe.cli import main
from image_files import explain_command, write_images
from results import commit_versions, data_files, stored_rows

ROW_KEY = [("image_path", "ascending"), ("method", "ascending"), ("class_rank", "ascending")]
FLOATS = ("logit", "probability", "map", "seconds", "raw_min", "raw_max")
PER_RUN = ("run_id",)


def fdpipe_process(*args: str) -> subprocess.Popen:
    code = "import sys; from fdpipe.cli import main; sys.exit(main())"
    return subprocess.Popen([sys.executable, "-c", code, *args], stderr=subprocess.DEVNULL)


def rows(output: Path) -> pa.Table:
    """What readers see: the committed parts only."""
    return stored_rows(output).sort_by(ROW_KEY)


def assert_same_rows(resumed: pa.Table, uninterrupted: pa.Table) -> None:
    assert resumed.num_rows == uninterrupted.num_rows
    varying = [*FLOATS, *PER_RUN]
    assert resumed.drop_columns(varying).equals(uninterrupted.drop_columns(varying))
    for name, rtol in (
        ("logit", 1e-6),
        ("probability", 1e-6),
        ("raw_min", 1e-5),
        ("raw_max", 1e-5),
    ):
        np.testing.assert_allclose(resumed[name].to_numpy(), uninterrupted[name].to_numpy(), rtol)
    for a, b in zip(resumed["map"].to_pylist(), uninterrupted["map"].to_pylist(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("resume") / "images"
    write_images(directory, 20, size=(160, 120))
    return directory


def test_sigkill_then_resume_equals_an_uninterrupted_run(images: Path, tmp_path: Path) -> None:
    killed = tmp_path / "killed"
    process = fdpipe_process(*explain_command(images, killed))
    deadline = time.monotonic() + 600  # a ceiling for a loaded machine, not a timing
    while not list(killed.glob("_delta_log/*.json")) and process.poll() is None:
        assert time.monotonic() < deadline, "no commit appeared"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    partial = rows(killed)
    assert 0 < partial.num_rows < 20  # killed mid-way; only complete parts are visible
    assert partial.num_rows % 2 == 0

    resumed = CliRunner().invoke(main, explain_command(images, killed))
    assert resumed.exit_code == 0, resumed.output
    assert f"skipped {partial.num_rows} already in the output" in resumed.output

    fresh = CliRunner().invoke(main, explain_command(images, tmp_path / "fresh"))
    assert fresh.exit_code == 0, fresh.output
    final = rows(killed)
    assert len(set(final["image_path"].to_pylist())) == final.num_rows == 20  # no duplicates
    assert_same_rows(final, rows(tmp_path / "fresh"))


def test_rerun_of_a_finished_run_adds_nothing(images: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, explain_command(images, tmp_path / "out")).exit_code == 0
    versions = commit_versions(tmp_path / "out")
    again = runner.invoke(main, explain_command(images, tmp_path / "out"))
    assert again.exit_code == 0
    assert "done 0, failed 0, skipped 20" in again.output
    assert commit_versions(tmp_path / "out") == versions


def test_an_uncommitted_data_file_is_invisible_and_vacuumed(images: Path, tmp_path: Path) -> None:
    """What a run killed between writing a part's file and committing it leaves behind."""
    output = tmp_path / "out"
    assert CliRunner().invoke(main, explain_command(images, output)).exit_code == 0
    committed = data_files(output)[0]
    orphan = output / "part-00000-killed-before-its-commit.zstd.parquet"
    pq.write_table(pq.read_table(committed), orphan)  # the same rows again, never committed
    assert rows(output).num_rows == 20
    assert CliRunner().invoke(main, explain_command(images, output)).exit_code == 0
    assert rows(output).num_rows == 20
    assert CliRunner().invoke(main, ["vacuum", str(output), "--retain", "0h"]).exit_code == 0
    assert not orphan.exists() and committed.exists()


def test_another_model_setup_is_refused_and_overwrite_starts_over(
    images: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    output = tmp_path / "out"
    assert runner.invoke(main, explain_command(images, output)).exit_code == 0
    refused = runner.invoke(main, [*explain_command(images, output), "--layer", "features.9"])
    assert refused.exit_code == 2
    assert "another model setup (layer: 'features.12' -> 'features.9')" in refused.output
    assert "--overwrite" in refused.output
    assert "Usage:" not in refused.output and len(refused.output.strip().splitlines()) == 1
    changed_method = [a if a != "gradcam" else "layercam" for a in explain_command(images, output)]
    overwritten = runner.invoke(main, [*changed_method, "--overwrite"])
    assert overwritten.exit_code == 0, overwritten.output
    assert set(rows(output)["method"].to_pylist()) == {"layercam"}
    assert rows(output).num_rows == 20
