"""``fdpipe render``: colormap, overlays where the map is hot, row selection, contact sheets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from fdpipe.display import jet
from fdpipe.errors import FdpipeError
from fdpipe.job.config import JobConfig
from fdpipe.job.reader import images_root, select_rows
from fdpipe.job.run import run_job
from fdpipe.render import LABEL, LEGEND, TILE, overlay, render_overlays, render_sheets
from image_files import write_images
from PIL import Image


@pytest.fixture(scope="module")
def output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("render")
    write_images(root / "images", 3)
    (root / "images" / "broken.png").write_bytes(b"")
    config = JobConfig(
        input=root / "images", output=root / "out", model="squeezenet1_1",
        methods=("gradcam", "layercam"), top_k=2,
    )  # fmt: skip
    run_job(config)
    return config.output


@pytest.mark.parametrize(
    ("value", "rgb"), [(0.0, (0, 0, 128)), (0.5, (128, 255, 128)), (1.0, (128, 0, 0))]
)
def test_jet_runs_from_dark_blue_to_dark_red(value: float, rgb: tuple[int, int, int]) -> None:
    assert tuple(jet(np.full((1, 1), value))[0, 0]) == rgb


def test_overlay_is_red_where_the_map_peaks() -> None:
    image = Image.new("RGB", (80, 40), (128, 128, 128))
    native = np.zeros((4, 8), dtype=np.float32)
    native[0, 7] = 1.0  # top-right corner
    blended = np.asarray(overlay(image, native, alpha=0.5)).astype(int)
    assert blended.shape == (40, 80, 3)
    top_right, bottom_left = blended[2, 77], blended[37, 2]
    assert top_right[0] > top_right[2] and bottom_left[2] > bottom_left[0]


def test_crop_map_lands_on_its_box_and_nowhere_else() -> None:
    """--resize crop: the model saw the centre box; the map covers it, the rest stays the photo
    (and the whole-image box is the plain step-7 upsampling)."""
    image = Image.new("RGB", (90, 40), (128, 128, 128))
    native = np.zeros((4, 4), dtype=np.float32)
    native[0, 0] = 1.0  # the box's top-left corner
    box = (25.0, 0.0, 65.0, 40.0)
    blended = np.asarray(overlay(image, native, alpha=0.5, box=box)).astype(int)
    assert (blended[:, :25] == 128).all() and (blended[:, 65:] == 128).all()
    row, column = np.unravel_index(blended[..., 0].argmax(), blended.shape[:2])
    assert 25 <= column < 35 and row < 10
    whole = overlay(image, native, alpha=0.5, box=(0.0, 0.0, 90.0, 40.0))
    assert np.array_equal(np.asarray(whole), np.asarray(overlay(image, native, alpha=0.5)))


def test_select_rows_filters(output: Path) -> None:
    everything = list(select_rows(output))
    assert len(everything) == 3 * 2 * 2  # the failed file has no map
    chosen = list(select_rows(output, methods=["layercam"], images=["nested/*"], ranks=[1]))
    assert [(r.image_path, r.method, r.class_rank) for r in chosen] == [
        ("nested/img_002.jpg", "layercam", 1)
    ]
    assert chosen[0].native.shape == (13, 13)


def test_overlays_and_sheet(output: Path, tmp_path: Path) -> None:
    root = images_root(output)
    written = render_overlays(select_rows(output, ranks=[0]), root, tmp_path / "png")
    assert sorted(p.relative_to(tmp_path / "png").as_posix() for p in written) == sorted(
        f"{image}.{method}.rank0.png"
        for image in ("img_000.jpg", "img_001.jpg", "nested/img_002.jpg")
        for method in ("gradcam", "layercam")
    )
    assert Image.open(written[0]).size == (64, 48)  # the original image's size
    sheets = render_sheets(select_rows(output), root, tmp_path / "sheet", per_sheet=4)
    assert [p.name for p in sheets] == ["sheet-0000.png", "sheet-0001.png"]  # 3 images x 2 ranks
    assert Image.open(sheets[0]).size == (3 * TILE, 4 * (TILE + LABEL) + LEGEND)
    assert Image.open(sheets[1]).size == (3 * TILE, 2 * (TILE + LABEL) + LEGEND)


def test_the_legend_holds_its_whole_display_line() -> None:
    """The demo's six methods and two displays: the line is not cut at the strip's edge."""
    from fdpipe.display import colormap
    from fdpipe.render import legend
    from PIL import ImageFont

    methods = ["fdcam", "gradcam", "gradcampp", "layercam", "ablationcam", "fgcam"]
    strip = legend(methods, None, colormap())
    font = ImageFont.load_default(12)
    text_width = font.getlength("display: fdcam, gradcam, gradcampp, layercam, ablationcam")
    assert strip.width > text_width + font.getlength(": min-max; fgcam: clipped at p99")
    ink = np.asarray(strip.convert("L"))[22:, -4:]  # a margin stays free at the right edge
    assert ink.min() == 255


@pytest.mark.parametrize("sheet", [False, True])
def test_a_file_fdpipe_did_not_write_is_never_overwritten(
    output: Path, tmp_path: Path, sheet: bool
) -> None:
    """A user's file with the name of an overlay (or sheet) is kept; the picture goes beside
    it; a second render writes over its own file, not the user's, and adds no third one."""
    name = "sheet-0000.png" if sheet else "img_000.jpg.gradcam.rank0.png"
    mine = tmp_path / "png" / name
    mine.parent.mkdir()
    mine.write_bytes(b"mine")
    draw = render_sheets if sheet else render_overlays
    rows = list(select_rows(output, methods=["gradcam"], images=["img_000.jpg"]))
    for _ in range(2):
        written = draw(rows, images_root(output), tmp_path / "png")
        assert mine.read_bytes() == b"mine"
        beside = mine.with_name(mine.stem + "~1.png")
        assert beside in written and Image.open(beside).size[0] > 0
        assert not mine.with_name(mine.stem + "~2.png").exists()


@pytest.mark.parametrize("odd", ["symlink", "fifo"])
def test_an_odd_marker_or_a_linked_overlay_is_never_written_through(
    output: Path, tmp_path: Path, odd: str
) -> None:
    """A marker that is a link (to a user's file) or a FIFO is refused before anything is
    written, never appended to or waited on; an overlay name that is a link is not followed."""
    rows = list(select_rows(output, methods=["gradcam"], images=["img_000.jpg"]))
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"mine")
    folder = tmp_path / "png"
    folder.mkdir()
    if odd == "symlink":
        (folder / ".fdpipe-output").symlink_to(victim)
    else:
        os.mkfifo(folder / ".fdpipe-output")
    with pytest.raises(FdpipeError, match="is not a regular file"):
        render_overlays(rows, images_root(output), folder)
    assert victim.read_bytes() == b"mine"
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "img_000.jpg.gradcam.rank0.png").symlink_to(victim)
    render_overlays(rows, images_root(output), linked)
    assert victim.read_bytes() == b"mine" and (linked / "img_000.jpg.gradcam.rank0~1.png").is_file()
