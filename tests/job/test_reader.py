"""The one reader of stored maps (``fdpipe.job.reader``): its filter and vectorised decoder
against a plain per-row reading, and maps of a ``--resize crop`` output placed in their box."""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path

import fdpipe
import numpy as np
import pyarrow as pa
import pytest
import torch
from fdpipe.bench.report_suite import write_synthetic_output
from fdpipe.job.reader import decode_maps, iter_rows, select_rows
from fdpipe.kernels.postprocess import place_map

NAMES = [f"img_{i:03d}.jpg" for i in range(6)] + ["nested/img_006.jpg"]
BOX = (8.0, 0.0, 56.0, 48.0)  # the centre 48 x 48 of a 64 x 48 image, as --resize crop records


@pytest.fixture(scope="module")
def output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two runs: the second supersedes three images; one image failed; maps with a crop box."""
    root = tmp_path_factory.mktemp("reader")
    failed = {"img_002.jpg": "cannot identify image file"}
    write_synthetic_output(root / "out", root, NAMES, failed=failed, top_k=2, map_box=BOX)
    write_synthetic_output(
        root / "out", root, NAMES[:3], top_k=2, map_box=BOX, seed=1,
        run_id="20261123T000000.000000Z-000000",
    )  # fmt: skip
    return root / "out"


def plain_rows(output: Path) -> list[dict]:
    """The reference: every current row as Python objects, one at a time."""
    return [row for batch in iter_rows(output) for row in batch.to_pylist()]


@pytest.mark.parametrize(
    "wanted",
    [
        {},
        {"methods": ["layercam"]},
        {"ranks": [1]},
        {"images": ["nested/*", "img_00[01].jpg"]},
        {"methods": ["gradcam"], "ranks": [0], "images": ["img_*"]},
    ],
)
def test_select_rows_is_the_plain_filter_and_decode(output: Path, wanted: dict) -> None:
    expected = [
        row for row in plain_rows(output)
        if row["status"] == "ok"
        and row["method"] in wanted.get("methods", [row["method"]])
        and row["class_rank"] in wanted.get("ranks", [row["class_rank"]])
        and any(fnmatchcase(row["image_path"], g) for g in wanted.get("images", ["*"]))
    ]  # fmt: skip
    got = list(select_rows(output, **wanted))
    assert len(got) == len(expected) > 0
    for row, reference in zip(got, expected, strict=True):
        keys = ("image_path", "method", "class_rank", "class_index", "class_name")
        assert tuple(getattr(row, k) for k in keys) == tuple(reference[k] for k in keys)
        assert row.probability == pytest.approx(reference["probability"])
        shape = (reference["map_height"], reference["map_width"])
        np.testing.assert_array_equal(row.native, np.float32(reference["map"]).reshape(shape))
        assert row.native.flags.writeable  # torch takes it without a copy or a warning
        assert row.box == BOX and row.frame == (48, 64)


def test_decode_maps_of_a_slice_and_of_failed_rows(output: Path) -> None:
    table = pa.Table.from_batches(list(iter_rows(output)))
    sliced = table.slice(3, 9)  # offsets that do not start at zero
    decoded = decode_maps(sliced)
    for native, stored in zip(decoded, sliced.to_pylist(), strict=True):
        if stored["map"] is None:
            assert native is None and stored["status"] == "failed"
        else:
            assert native is not None and native.shape == (13, 13)
            np.testing.assert_array_equal(native.ravel(), np.float32(stored["map"]))


def test_read_maps_original_places_crop_maps_in_their_box(output: Path) -> None:
    """#19 item 1: ``size="original"`` stretched a cropped map over the whole image."""
    maps, rows = fdpipe.read_maps(output, "gradcam", size="original")
    natives, _ = fdpipe.read_maps(output, "gradcam")
    assert len(maps) == rows.num_rows == len(natives) > 0
    for full, native in zip(maps, natives, strict=True):
        assert full.shape == (48, 64)
        assert (full[:, :8] == 0).all() and (full[:, 56:] == 0).all()  # the model saw nothing
        assert full[:, 8:56].max() == pytest.approx(1.0, abs=1e-5)
        placed = place_map(torch.from_numpy(native), (48, 64), BOX).numpy()
        np.testing.assert_array_equal(full, placed)
