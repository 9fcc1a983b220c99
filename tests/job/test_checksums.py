"""Checksums of the table's data files (issue 19, item 15, the writer's side): delta-rs writes no
Parquet page checksums, so fdpipe records each data file's sha256 when it commits it; a file whose
pages were altered behind an intact footer is named and skipped by readers, and set aside and
redone by the next ``explain``, its rows then equal to an undamaged run's."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from fdpipe.cli import main
from fdpipe.job.checksums import CHECKSUMS_DIR, added_files
from fdpipe.job.reader import read_maps
from fdpipe.job.table import DELTA_LOG, DataFileError
from image_files import explain_command, write_images
from results import data_files, flip_pages, stored_rows

COMPARED = ["image_path", "method", "class_rank", "class_index", "probability", "map", "status"]


def explain(images: Path, output: Path) -> None:
    result = CliRunner().invoke(main, explain_command(images, output))
    assert result.exit_code == 0, result.output


def current(output: Path) -> list[dict]:
    rows = stored_rows(output).select(COMPARED).to_pylist()
    return sorted(rows, key=lambda r: (r["image_path"], r["method"], r["class_rank"]))


def test_every_committed_data_file_has_its_sha256_beside_the_table(tmp_path: Path) -> None:
    images, output = tmp_path / "images", tmp_path / "out"
    write_images(images, 4)
    explain(images, output)
    files = data_files(output)
    sums = sorted((output / CHECKSUMS_DIR).glob("*.sha256"))
    assert [p.name for p in sums] == sorted(f"{f.name}.sha256" for f in files)
    for path in files:  # sha256sum's format, names relative to the output
        digest, name = (output / CHECKSUMS_DIR / f"{path.name}.sha256").read_text().split()
        assert name == path.name and digest == hashlib.sha256(path.read_bytes()).hexdigest()
    result = CliRunner().invoke(main, ["compact", str(output)])
    assert result.exit_code == 0, result.output
    assert CliRunner().invoke(main, ["vacuum", str(output), "--retain", "0h"]).exit_code == 0
    left = {p.name.removesuffix(".sha256") for p in (output / CHECKSUMS_DIR).iterdir()}
    assert left == {f.name for f in data_files(output)} and left.isdisjoint(f.name for f in files)


@pytest.mark.parametrize("column", ["map.list.item", "probability", "image_path"])
def test_altered_pages_are_set_aside_and_redone_by_the_next_explain(
    tmp_path: Path, column: str, caplog: pytest.LogCaptureFixture
) -> None:
    images, output, clean = tmp_path / "images", tmp_path / "out", tmp_path / "clean"
    write_images(images, 4)
    explain(images, clean)
    explain(images, output)
    bad, good = data_files(output)
    flip_pages(bad, column)
    with caplog.at_level(logging.WARNING):
        _, rows = read_maps(output)  # a reader names the file and skips it
    assert f"{bad.name}: skipped (sha256" in caplog.text
    assert rows["image_path"].to_pylist() == pq.read_table(good)["image_path"].to_pylist()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        explain(images, output)  # sets it aside, redoes its images
    assert f"{bad}: damaged data file" in caplog.text and "2 changed" not in caplog.text
    assert (bad.parent / f".{bad.name}.damaged").is_file() and not bad.exists()
    assert current(output) == current(clean)


def test_compact_refuses_to_copy_a_damaged_file(tmp_path: Path) -> None:
    images, output = tmp_path / "images", tmp_path / "out"
    write_images(images, 4)
    explain(images, output)
    bad = data_files(output)[0]
    flip_pages(bad, "map.list.item")
    before = sorted(os.listdir(output))
    result = CliRunner().invoke(main, ["compact", str(output)])
    assert result.exit_code == 2 and "fdpipe explain" in result.output, result.output
    assert str(bad) in result.output and sorted(os.listdir(output)) == before


def test_a_tampered_log_cannot_make_fdpipe_hash_or_write_outside_the_table(
    tmp_path: Path,
) -> None:
    log = tmp_path / DELTA_LOG
    log.mkdir()
    adds = ["../../etc/passwd", "sub/part-0.parquet", ".hidden.parquet", "part-00001-a.parquet"]
    lines = [json.dumps({"add": {"path": p}}) for p in adds] + ["not json", "[1]"]
    (log / f"{3:020d}.json").write_text("\n".join(lines))
    assert added_files(log, 3) == ["part-00001-a.parquet"]
    assert added_files(log, 4) == []


@pytest.mark.parametrize("odd", ["file", "fifo"])
def test_an_odd_checksum_folder_or_file_never_stops_a_run_or_hangs_a_reader(
    tmp_path: Path, odd: str, caplog: pytest.LogCaptureFixture
) -> None:
    images, output = tmp_path / "images", tmp_path / "out"
    write_images(images, 2)
    if odd == "file":  # a file where the checksums go: the run commits, unchecked
        output.mkdir()
        (output / CHECKSUMS_DIR).write_text("not a folder")
        with caplog.at_level(logging.WARNING):
            explain(images, output)
        assert "neither checked nor recorded" in caplog.text
        assert len(read_maps(output)[1]) == 2
        return
    explain(images, output)
    (part,) = data_files(output)
    sidecar = output / CHECKSUMS_DIR / f"{part.name}.sha256"
    sidecar.unlink()
    os.mkfifo(sidecar)  # would block a reader: taken as a damaged file, redone
    with caplog.at_level(logging.WARNING):
        with pytest.raises(DataFileError, match="none of its 1 data file"):
            read_maps(output)
        explain(images, output)
    assert "not a regular file" in caplog.text and len(read_maps(output)[1]) == 2


def add_to_log(output: Path, path: str) -> None:
    """A copy of the newest commit's first data file's add action, naming ``path``."""
    newest = sorted((output / DELTA_LOG).glob("*.json"))[-1]
    lines = newest.read_text().splitlines()
    add = next(json.loads(line) for line in lines if '"add"' in line)
    add["add"]["path"] = path
    newest.write_text("\n".join([*lines, json.dumps(add)]) + "\n")


@pytest.mark.parametrize("named", ["relative", "absolute"])
def test_a_log_naming_a_file_outside_the_table_is_refused_and_the_file_untouched(
    tmp_path: Path, named: str
) -> None:
    """Found by the hostile pass: ``explain`` set a user's file outside the table aside (renamed
    it) when a tampered log listed it; an absolute path was a traceback."""
    images, output = tmp_path / "images", tmp_path / "out"
    write_images(images, 2)
    explain(images, output)
    victim = tmp_path / "outside" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("precious")
    add_to_log(output, "../outside/victim.txt" if named == "relative" else f"file://{victim}")
    for command in (
        explain_command(images, output),
        ["render", str(output), "-o", str(tmp_path / "x.png")],
    ):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2, result.output
        assert "outside the table" in result.output and "Traceback" not in result.output
        assert sorted(os.listdir(victim.parent)) == ["victim.txt"]
        assert victim.read_text() == "precious"


def test_a_checksum_folder_that_is_a_link_is_never_followed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by the hostile pass: a ``_checksums`` link to a folder outside the table was
    written into, and a file there deleted, when a damaged data file was set aside."""
    images, output, elsewhere = tmp_path / "images", tmp_path / "out", tmp_path / "elsewhere"
    write_images(images, 2)
    explain(images, output)
    (part,) = data_files(output)
    (output / CHECKSUMS_DIR).rename(elsewhere)
    (output / CHECKSUMS_DIR).symlink_to(elsewhere)
    before = {p.name: p.read_bytes() for p in elsewhere.iterdir()}
    write_images(images, 3)
    with caplog.at_level(logging.WARNING):
        explain(images, output)  # a commit: its checksum is not written through the link
        for command in (["compact", str(output)], ["vacuum", str(output), "--retain", "0h"]):
            result = CliRunner().invoke(main, command)  # vacuum: nor deleted through it
            assert result.exit_code == 0, result.output
    assert "neither checked nor recorded" in caplog.text and not part.exists()
    assert {p.name: p.read_bytes() for p in elsewhere.iterdir()} == before


@pytest.mark.parametrize("column", ["map.list.item", "image_path"])
def test_a_damaged_file_without_a_checksum_is_redone_and_then_sealed(
    tmp_path: Path, column: str
) -> None:
    """A table written before checksums (or a run killed before it sealed its file): ``explain``
    crashed with a pyarrow traceback on pages that do not decode."""
    images, output, clean = tmp_path / "images", tmp_path / "out", tmp_path / "clean"
    write_images(images, 4)
    explain(images, clean)
    explain(images, output)
    shutil.rmtree(output / CHECKSUMS_DIR)
    bad, good = data_files(output)
    flip_pages(bad, column)
    explain(images, output)
    assert (bad.parent / f".{bad.name}.unreadable").is_file() and not bad.exists()
    assert current(output) == current(clean)
    assert (output / CHECKSUMS_DIR / f"{good.name}.sha256").is_file()  # decoded, then sealed
