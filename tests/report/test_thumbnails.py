"""The report's thumbnails: a ``--resize crop`` map drawn over the part of the thumbnail the
model saw (the box is stored in the original image's pixels; the thumbnail is smaller)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fdpipe.display import colormap
from fdpipe.job.reader import MapRow
from fdpipe.report.scan import ImageEntry
from fdpipe.report.thumbnails import Thumbnails
from PIL import Image

GREY = 128


@pytest.mark.parametrize(
    ("original", "box", "inside"),
    [
        ((320, 160), (80.0, 0.0, 240.0, 160.0), (20, 60)),  # thumbnail 80 x 40: box / 4
        ((160, 320), (0.0, 80.0, 160.0, 240.0), (20, 60)),  # portrait: rows 20..60 of 80
    ],
)
def test_crop_overlay_lies_in_the_scaled_box(
    tmp_path: Path, original: tuple[int, int], box: tuple[float, ...], inside: tuple[int, int]
) -> None:
    width, height = original
    Image.new("RGB", original, (GREY,) * 3).save(tmp_path / "photo.png")
    native = np.random.default_rng(0).random((7, 7), dtype=np.float32)
    row = MapRow("photo.png", "gradcam", 0, 1, "one", 0.9, native, box, (height, width))  # type: ignore[arg-type]
    entry = ImageEntry("photo.png", None, "ok", maps=[row], rows=1)
    thumbnails = Thumbnails(tmp_path / "site", 80, colormap(), None, tmp_path)
    _, overlays = thumbnails.for_image(entry)
    drawn = np.asarray(Image.open(tmp_path / "site" / overlays[0])).astype(int)
    across = drawn if width > height else drawn.transpose(1, 0, 2)  # along the long side
    assert across.shape[:2] == (40, 80)
    low, high = inside
    for outside in (across[:, : low - 8], across[:, high + 8 :]):  # the photo (JPEG's blur)
        assert np.abs(outside - GREY).mean() < 1 and np.abs(outside - GREY).max() <= 8
    assert np.abs(across[:, low + 4 : high - 4] - GREY).mean() > 20  # the map, all over the box
