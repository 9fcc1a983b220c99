"""A directory of broken and unusual files: one failed row per bad file, good files unaffected."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from fdpipe.job.config import JobConfig
from fdpipe.job.run import run_job
from PIL import Image
from results import stored_rows
from skimage import data

# file name -> expected error fragment (None: decodes fine)
EXPECTED = {
    "corrupt.jpg": "not an image file",
    "truncated.jpg": "truncated",
    "empty.png": "empty file",
    "notes.png": "not an image file",
    "huge.png": "image too large",
    "gray.png": None,
    "cmyk.jpg": None,
    "rgba.png": None,
    "sixteen.png": None,
    "tiny.png": None,
    "large.jpg": None,
    "cat.jpg": None,
}


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` but holds almost no data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0"))


def write_zoo(directory: Path) -> None:
    directory.mkdir()
    cat = Image.fromarray(data.chelsea())
    cat.resize((96, 64)).save(directory / "cat.jpg")
    full = (directory / "cat.jpg").read_bytes()
    (directory / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (directory / "corrupt.jpg").write_bytes(np.random.default_rng(0).bytes(2000))
    (directory / "empty.png").write_bytes(b"")
    (directory / "notes.png").write_text("shopping list: milk, eggs\n")
    (directory / "huge.png").write_bytes(png_header_only(20_000, 20_000))
    cat.convert("L").resize((40, 30)).save(directory / "gray.png")
    cat.convert("CMYK").resize((40, 30)).save(directory / "cmyk.jpg")
    rgba = cat.convert("RGBA").resize((40, 30))
    rgba.putalpha(128)
    rgba.save(directory / "rgba.png")
    ramp = np.linspace(0, 65535, 40 * 30).reshape(30, 40).astype(np.uint16)
    Image.fromarray(ramp).save(directory / "sixteen.png")
    Image.new("RGB", (1, 1), (200, 30, 30)).save(directory / "tiny.png")
    cat.resize((3000, 2000)).save(directory / "large.jpg")


@pytest.fixture(scope="module")
def zoo_rows(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("zoo")
    write_zoo(root / "images")
    config = JobConfig(
        input=root / "images", output=root / "out", model="squeezenet1_1",
        methods=("gradcam",), batch_size=4,
    )  # fmt: skip
    summary = run_job(config)
    bad = sum(message is not None for message in EXPECTED.values())
    assert (summary.done, summary.failed, summary.any_failed) == (len(EXPECTED) - bad, bad, True)
    table = stored_rows(config.output)
    assert table.num_rows == len(EXPECTED)  # exactly one row per file, good or bad
    return {row["image_path"]: row for row in table.to_pylist()}


@pytest.mark.parametrize(("name", "fragment"), [(k, v) for k, v in EXPECTED.items() if v])
def test_bad_file_is_one_failed_row_with_a_reason(
    zoo_rows: dict[str, dict], name: str, fragment: str
) -> None:
    row = zoo_rows[name]
    assert row["status"] == "failed"
    assert fragment in row["error"]
    assert row["map"] is None and row["method"] is None and row["class_index"] is None
    assert row["image_sha256"] is not None  # the file exists; its content hash is known


@pytest.mark.parametrize(
    ("name", "size"),
    [("gray.png", (40, 30)), ("cmyk.jpg", (40, 30)), ("rgba.png", (40, 30)),
     ("sixteen.png", (40, 30)), ("tiny.png", (1, 1)), ("large.jpg", (3000, 2000)),
     ("cat.jpg", (96, 64))],
)  # fmt: skip
def test_unusual_files_are_explained(zoo_rows: dict[str, dict], name: str, size: tuple) -> None:
    row = zoo_rows[name]
    assert row["status"] == "ok" and row["error"] is None
    assert (row["original_width"], row["original_height"]) == size
    assert len(row["map"]) == 13 * 13 and np.isfinite(row["map"]).all()


def test_good_file_rows_do_not_depend_on_bad_neighbours(
    zoo_rows: dict[str, dict], tmp_path: Path
) -> None:
    write_zoo(tmp_path / "images")
    for name in EXPECTED.keys() - {"cat.jpg"}:
        (tmp_path / "images" / name).unlink()
    config = JobConfig(
        input=tmp_path / "images", output=tmp_path / "out", model="squeezenet1_1",
        methods=("gradcam",),
    )  # fmt: skip
    run_job(config)
    (alone,) = stored_rows(config.output).to_pylist()
    mixed = zoo_rows["cat.jpg"]
    assert alone["class_index"] == mixed["class_index"]
    np.testing.assert_allclose(alone["map"], mixed["map"], atol=1e-6)
