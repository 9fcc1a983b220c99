"""Display normalisation and colormaps: the stored map is untouched, its picture readable."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from fdpipe.cli import main
from fdpipe.display import (
    MINMAX,
    PIXEL_LEVEL,
    Display,
    colormap,
    display_for,
    jet,
    parse_display,
)
from fdpipe.render import overlay
from PIL import Image


def sparse_map() -> np.ndarray:
    """A pixel-level map: faint edges (0.05) and a few bright pixels (1.0)."""
    values = np.zeros((100, 100), dtype=np.float32)
    values[:, 50] = 0.05  # an edge a person should see
    values[10, 10] = values[20, 20] = 1.0
    return values


def test_percentile_clipping_and_gamma_bring_faint_edges_up() -> None:
    stored = sparse_map()
    shown = Display(percentile=99.0).apply(stored)
    assert shown[5, 50] == pytest.approx(1.0)  # p99 is the edge's value: the edge is hot
    assert shown[0, 0] == 0.0 and stored[5, 50] == pytest.approx(0.05)  # stored map unchanged
    assert Display(gamma=0.5).apply(stored)[5, 50] == pytest.approx(0.05**0.5)
    np.testing.assert_array_equal(MINMAX.apply(stored), stored)
    nan = np.full((4, 4), np.nan, dtype=np.float32)
    assert np.all(Display(percentile=99.0, gamma=0.7).apply(nan) == 0.0)  # no NaN colours
    assert np.all(Display(percentile=50.0).apply(np.zeros((4, 4))) == 0.0)  # all-zero map


def test_auto_picks_pixel_level_for_fgcam_only() -> None:
    assert display_for("fgcam", None) is PIXEL_LEVEL
    assert display_for("fgcam:base=fdcam,resolution=input", None) is PIXEL_LEVEL
    assert display_for("gradcam", None) is MINMAX
    assert display_for("fgcam", MINMAX) is MINMAX  # an explicit choice wins


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("auto", None),
        ("minmax", MINMAX),
        ("pixel", PIXEL_LEVEL),
        ("percentile=99.5", Display(99.5)),
        ("percentile=98, gamma=0.5, weighted=true", Display(98.0, 0.5, True)),
        ("gamma=2", Display(None, 2.0)),
    ],
)
def test_parse_display(text: str, expected: Display | None) -> None:
    assert parse_display(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "p99", "percentile=0", "percentile=101", "percentile=nan", "gamma=-1", "gamma=inf",
     "gamma=x", "weighted=maybe", "colour=1"],
)  # fmt: skip
def test_parse_display_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="bad display"):
        parse_display(text)


def test_colormaps() -> None:
    builtin = colormap()
    assert builtin.name == "jet"
    np.testing.assert_array_equal(builtin(np.array([[0.0, 1.0]])), jet(np.array([[0.0, 1.0]])))
    viridis = colormap("viridis")  # matplotlib is a test extra
    assert tuple(viridis(np.array([[0.0]]))[0, 0]) == (68, 1, 84)  # viridis starts dark purple
    assert viridis.css_gradient().startswith("linear-gradient(to right, rgb(68,1,84)")
    with pytest.raises(ValueError, match="unknown colormap"):
        colormap("no-such-map")


def test_weighted_display_keeps_the_photo_where_the_map_is_cold() -> None:
    photo = Image.new("RGB", (100, 100), (200, 200, 200))
    pixels = np.asarray(overlay(photo, sparse_map(), 0.5, display=PIXEL_LEVEL)).astype(int)
    assert tuple(pixels[0, 0]) == (80, 80, 80)  # cold: the dimmed grey photo, no colour wash
    red, _, blue = pixels[5, 50]
    assert red > 100 and red > blue  # the faint edge shows hot (jet's red end)
    plain = np.asarray(overlay(photo, sparse_map(), 0.5, display=MINMAX)).astype(int)
    assert plain[0, 0, 2] > plain[0, 0, 0]  # min-max washes the cold photo blue


def test_render_command_display_options(tmp_path) -> None:
    runner = CliRunner()
    for args in (["--display", "percentile=200"], ["--colormap", "no-such-map"]):
        refused = runner.invoke(main, ["render", str(tmp_path), "--to", str(tmp_path), *args])
        assert refused.exit_code == 2 and "Traceback" not in refused.output
