"""A full disk or a file-size limit (issue 19, item 13): its own one-line error and exit code 4,
the run record says so, nothing written before is lost and no half-written part stays."""

from __future__ import annotations

import errno
import json
import resource
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from fdpipe.cli import main
from fdpipe.job import parts
from fdpipe.job.parts import OutputDataset
from image_files import explain_command, write_images


def test_a_full_disk_is_a_storage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, output = tmp_path / "images", tmp_path / "out"
    write_images(images, 4)
    written, write_table = [], pq.write_table

    def fill_up(table: object, path: object, **kwargs: object) -> None:
        if written:  # the first part fits, the second finds the disk full
            raise OSError(errno.ENOSPC, "No space left on device")
        write_table(table, path, **kwargs)  # type: ignore[arg-type]
        written.append(path)

    monkeypatch.setattr(parts.pq, "write_table", fill_up)
    result = CliRunner().invoke(main, explain_command(images, output))
    assert result.exit_code == 4, result.output
    assert not isinstance(result.exception, OSError)  # no traceback
    (line,) = [x for x in result.output.splitlines() if "No space left" in x]
    assert str(output) in line and "rerun" in line
    (record,) = [json.loads(p.read_text()) for p in (output / "_runs").glob("*.json")]
    assert record["status"] == "failed" and record["exit_code"] == 4
    assert len(OutputDataset(output).parts()) == 1 and not list(output.glob(".*.tmp"))


def limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (12 * 1024, 12 * 1024))  # ulimit -f 12


def test_a_file_size_limit_is_a_storage_error(tmp_path: Path) -> None:
    images, output = tmp_path / "images", tmp_path / "out"
    write_images(images, 10)
    args = explain_command(images, output, "--save-weights", "--part-size", "10")
    code = "import sys; from fdpipe.cli import main; sys.exit(main())"
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        timeout=300,
        preexec_fn=limit_file_size,
    )
    stderr = done.stderr.decode()
    assert done.returncode == 4, stderr[-2000:]
    assert "Traceback" not in stderr and "File too large" in stderr
    assert not OutputDataset(output).parts() and not list(output.glob(".*.tmp"))
