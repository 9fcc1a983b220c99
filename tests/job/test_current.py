"""Which rows are current (``fdpipe.job.current``): failures without a content hash included."""

from __future__ import annotations

import os
from pathlib import Path

from click.testing import CliRunner
from fdpipe.cli import main
from fdpipe.job.reader import iter_rows
from image_files import explain_command, write_images


def test_failures_without_a_sha256_stay_current_and_are_not_new_again(tmp_path: Path) -> None:
    """A broken symlink or a FIFO has no content hash: its failed row must not vanish (issue 19,
    item 12): the readers show it, the report counts it, --no-retry does not read it again."""
    images = tmp_path / "images"
    write_images(images, 1)
    (images / "broken.jpg").symlink_to(tmp_path / "nonexistent")
    os.mkfifo(images / "pipe.jpg")
    output = tmp_path / "out"
    first = CliRunner().invoke(main, explain_command(images, output))
    assert first.exit_code == 1, first.output
    rows = [row for batch in iter_rows(output) for row in batch.to_pylist()]
    failed = sorted(row["image_path"] for row in rows if row["status"] == "failed")
    assert failed == ["broken.jpg", "pipe.jpg"]
    again = CliRunner().invoke(main, explain_command(images, output, "--no-retry"))
    assert again.exit_code == 1 and "new 0" in again.output, again.output
    assert "(+2 in earlier runs)" in again.output
    site = CliRunner().invoke(main, ["report", str(output), "-o", str(tmp_path / "site")])
    assert site.exit_code == 0 and "(2 failed)" in site.output, site.output
