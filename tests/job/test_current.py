"""Which rows are current (``fdpipe.job.current``): failures without a content hash included."""

from __future__ import annotations

import os
from pathlib import Path

from click.testing import CliRunner
from fdpipe.cli import main
from fdpipe.job.current import covers
from fdpipe.job.reader import iter_rows, read_maps
from image_files import explain_command, write_images
from results import duckdb_sql


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


def test_a_wider_top_k_supersedes_a_narrower_one(tmp_path: Path) -> None:
    """Issue 19, also seen: ``--top-k 2`` on a top-1 output leaves one rank-0 map per image and
    method (the top-2 set holds the top-1 rows), for fdpipe's readers and any Delta reader; a
    later ``--top-k 1`` explains nothing again; ``--classes`` sets stay beside them."""
    images, output = tmp_path / "images", tmp_path / "out"
    write_images(images, 2)

    def explain(*extra: str) -> str:
        result = CliRunner().invoke(main, explain_command(images, output, *extra))
        assert result.exit_code == 0, result.output
        return result.output

    explain()
    explain("--top-k", "2")
    maps, rows = read_maps(output)
    keys = sorted((r["image_path"], r["targets"], r["class_rank"]) for r in rows.to_pylist())
    paths = sorted({key[0] for key in keys})
    assert keys == [(p, "top-2", rank) for p in paths for rank in (0, 1)]
    assert len(maps) == 4 and duckdb_sql(f"select * from delta_scan('{output}')").num_rows == 4
    assert "skipped 2" in explain("--top-k", "1")  # held by the top-2 rows
    explain("--classes", "281")
    _, rows = read_maps(output, ranks=[0])
    assert sorted(rows["targets"].to_pylist()) == ["classes=281", "classes=281", "top-2", "top-2"]


def test_a_wider_set_after_a_label_column_supersedes_a_narrower_one(tmp_path: Path) -> None:
    """Found by the hostile pass: the rule above held for ``top-k`` only, so ``--target-column
    label --top-k 2`` after ``--top-k 1`` explained every image again and left two rank-0 label
    maps per image (``column=label+top-1`` and ``+top-2``)."""
    images, output = tmp_path / "images", tmp_path / "out"
    paths = write_images(images, 2)
    manifest = tmp_path / "labels.csv"
    manifest.write_text("image_path,label\n" + "".join(f"{p},967\n" for p in paths))

    def explain(*extra: str) -> str:
        args = [*explain_command(manifest, output), "--target-column", "label", *extra]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        return result.output

    explain()  # the label alone: column=label
    explain("--top-k", "1")
    explain("--top-k", "2")
    _, rows = read_maps(output)
    targets = {r["targets"] for r in rows.to_pylist()}
    assert targets == {"column=label+top-2"}, targets
    per_rank = sorted((r["image_path"], r["class_rank"]) for r in rows.to_pylist())
    assert len(per_rank) == len(set(per_rank))  # one map per image and rank
    assert duckdb_sql(f"select * from delta_scan('{output}')").num_rows == len(per_rank)
    assert "skipped 2" in explain("--top-k", "1") and "skipped 2" in explain()  # held


def test_covers_compares_widths_within_a_family() -> None:
    assert covers("top-2", "top-1") and not covers("top-1", "top-2")
    assert covers("column=label+top-2", "column=label+top-1")
    assert covers("column=label+top-1", "column=label")
    assert not covers("column=label+top-2", "top-1")  # another family
    assert not covers("column=other+top-2", "column=label")
    assert not covers("classes=1,2", "classes=1") and covers("classes=1", "classes=1")
