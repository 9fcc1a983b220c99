"""Damaged parts read back (issue 19, item 15): a part whose data pages were altered with its
footer intact is named and skipped with a warning, never read as maps far outside [0, 1]."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from fdpipe.cli import main
from fdpipe.job.reader import read_maps
from image_files import explain_command, write_images
from results import data_files, flip_pages


@pytest.fixture
def two_parts(tmp_path: Path) -> Path:
    write_images(tmp_path / "images", 4)
    output = tmp_path / "out"
    result = CliRunner().invoke(main, explain_command(tmp_path / "images", output))
    assert result.exit_code == 0 and len(data_files(output)) == 2
    return output


def out_of_range(part: Path) -> None:
    """Maps decoded from rotten bytes: values far outside [0, 1] (what a flip gave: 1.4e38)."""
    table = pq.read_table(part)
    maps = table["map"].combine_chunks()
    values = pc.multiply(maps.values, pa.scalar(1e38, pa.float32()))
    bad = pa.ListArray.from_arrays(maps.offsets, values, mask=maps.is_null())
    table = table.set_column(table.schema.get_field_index("map"), "map", bad)
    pq.write_table(table.replace_schema_metadata(table.schema.metadata), part)


def flip_bytes(part: Path) -> None:
    flip_pages(part, "map.list.item")


@pytest.mark.parametrize("damage", [out_of_range, flip_bytes])
def test_a_damaged_part_is_named_and_skipped(
    two_parts: Path, damage: object, caplog: pytest.LogCaptureFixture
) -> None:
    bad, good = data_files(two_parts)
    damage(bad)  # type: ignore[operator]
    with caplog.at_level(logging.WARNING):
        maps, rows = read_maps(two_parts)
    assert bad.name in caplog.text and "skipped" in caplog.text
    assert rows["image_path"].to_pylist() == pq.read_table(good)["image_path"].to_pylist()
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    rendered = CliRunner().invoke(
        main, ["render", str(two_parts), "-o", str(two_parts.parent / "p")]
    )
    assert rendered.exit_code == 0 and bad.name in caplog.text, rendered.output


def truncate(part: Path) -> None:
    part.write_bytes(part.read_bytes()[:100])


@pytest.mark.parametrize("command", ["render", "report"])
def test_a_deleted_data_file_is_named_by_the_readers_and_redone(
    two_parts: Path, command: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 19, also seen: a data file deleted by hand is named in a warning by ``render`` and
    ``report`` (its images left out), and the next ``explain`` explains its images again."""
    bad, _ = data_files(two_parts)
    gone = set(pq.read_table(bad)["image_path"].to_pylist())
    bad.unlink()
    with caplog.at_level(logging.WARNING):
        result = CliRunner().invoke(
            main, [command, str(two_parts), "-o", str(two_parts.parent / "x")]
        )
    assert result.exit_code == 0, result.output
    assert f"{bad.name}: data file missing" in caplog.text
    again = CliRunner().invoke(main, explain_command(two_parts.parent / "images", two_parts))
    assert again.exit_code == 0 and "new 2," in again.output, again.output
    assert gone <= set(read_maps(two_parts)[1]["image_path"].to_pylist())


@pytest.mark.parametrize("damage", [truncate, Path.unlink])
@pytest.mark.parametrize("command", ["render", "report"])
def test_an_output_with_no_readable_data_file_fails_in_one_line(
    two_parts: Path, damage: object, command: str
) -> None:
    """Not "0 images" and exit 0: a night's output that cannot be read at all is an error."""
    for part in data_files(two_parts):
        damage(part)  # type: ignore[operator]
    result = CliRunner().invoke(main, [command, str(two_parts), "-o", str(two_parts.parent / "x")])
    assert result.exit_code == 2 and "none of its 2 data file(s) can be read" in result.output
    assert result.output.strip().count("\n") == 0 and "Traceback" not in result.output
