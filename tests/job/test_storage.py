"""A full disk or a file-size limit (issue 19, item 13): its own one-line error and exit code 4,
the run record says so, nothing written before is lost and no half-written part stays."""

from __future__ import annotations

import errno
import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from fdpipe.cli import main
from image_files import explain_command, write_images
from results import commit_versions


def test_a_full_disk_is_a_storage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, output = tmp_path / "images", tmp_path / "out"
    write_images(images, 4)
    import deltalake

    written, write_deltalake = [], deltalake.write_deltalake

    def fill_up(table: object, *args: object, **kwargs: object) -> None:
        if written:  # the first part fits, the second finds the disk full
            raise OSError(errno.ENOSPC, "No space left on device")
        write_deltalake(table, *args, **kwargs)  # type: ignore[arg-type]
        written.append(table)

    monkeypatch.setattr(deltalake, "write_deltalake", fill_up)
    result = CliRunner().invoke(main, explain_command(images, output))
    assert result.exit_code == 4, result.output
    assert not isinstance(result.exception, OSError)  # no traceback
    (line,) = [x for x in result.output.splitlines() if "No space left" in x]
    assert str(output) in line and "rerun" in line
    (record,) = [json.loads(p.read_text()) for p in (output / "_runs").glob("*.json")]
    assert record["status"] == "failed" and record["exit_code"] == 4
    assert commit_versions(output) == [0]  # the first part's commit stays


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
    assert not commit_versions(output)
