"""How a stored map is shown: display normalisation and colormaps, for overlays, sheets and the
HTML report.

The stored map stays what the method computed (min-max to [0, 1]); only its picture changes. A
coarse CAM reads well as is. A pixel-level map (FG-CAM at input resolution) puts most of its mass
in a few pixels, so under min-max it shows as a few bright dots: clipping at a high percentile and
a gamma below 1 bring its edges up. ``auto`` picks that for FG-CAM and min-max for the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np


@dataclass(frozen=True)
class Display:
    """Values at or above the ``percentile``-th percentile show as 1 (None: as stored, min-max),
    then ``v ** gamma``; ``weighted``: the photo is dimmed to grey and the colour's opacity follows
    the value, so that a sparse, pixel-level map stands out where it is hot and nowhere else."""

    percentile: float | None = None
    gamma: float = 1.0
    weighted: bool = False

    def apply(self, values: np.ndarray) -> np.ndarray:
        """(H, W) map in [0, 1] -> (H, W) display values in [0, 1]."""
        shown = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0)
        shown = np.clip(shown, 0.0, 1.0)
        if self.percentile is not None:
            top = float(np.percentile(shown, self.percentile))
            shown = np.clip(shown / top, 0.0, 1.0) if top > 0 else shown
        if self.gamma != 1.0:
            shown = shown**self.gamma
        return shown

    def describe(self) -> str:
        if self.percentile is None and self.gamma == 1.0:
            return "min-max"
        parts = [] if self.percentile is None else [f"clipped at p{self.percentile:g}"]
        if self.gamma != 1.0:
            parts.append(f"gamma {self.gamma:g}")
        if self.weighted:
            parts.append("over the dimmed photo")
        return ", ".join(parts)


MINMAX = Display()
PIXEL_LEVEL = Display(percentile=99.0, gamma=0.7, weighted=True)
PIXEL_LEVEL_METHODS = frozenset({"fgcam"})


def parse_display(text: str) -> Display | None:
    """``auto`` (None: chosen per method), ``minmax``, ``pixel`` (FG-CAM's), or
    ``percentile=P[,gamma=G][,weighted=true]``; ValueError with the reason otherwise."""
    text = text.strip()
    if text == "auto":
        return None
    named = {"minmax": MINMAX, "pixel": PIXEL_LEVEL}
    if text in named:
        return named[text]
    options: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in {"percentile", "gamma", "weighted"}:
            raise ValueError(
                f"bad display {text!r}: use auto, minmax, pixel or "
                "percentile=P[,gamma=G][,weighted=true]"
            )
        options[key.strip()] = value.strip()
    try:
        percentile = float(options["percentile"]) if "percentile" in options else None
        gamma = float(options.get("gamma", "1"))
    except ValueError:
        raise ValueError(f"bad display {text!r}: percentile and gamma are numbers") from None
    if percentile is not None and not (0 < percentile <= 100):
        raise ValueError(f"bad display {text!r}: percentile must be in (0, 100]")
    if not (math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"bad display {text!r}: gamma must be a positive number")
    weighted = options.get("weighted", "false").lower()
    if weighted not in {"true", "false"}:
        raise ValueError(f"bad display {text!r}: weighted is true or false")
    return Display(percentile, gamma, weighted == "true")


def display_for(method: str, chosen: Display | None) -> Display:
    """The display of ``method``'s maps: ``chosen``, or with ``auto`` (None) the pixel-level
    display for FG-CAM (any spec whose name is fgcam) and min-max for the others."""
    if chosen is not None:
        return chosen
    return PIXEL_LEVEL if method.split(":", 1)[0] in PIXEL_LEVEL_METHODS else MINMAX


@dataclass(frozen=True)
class Colormap:
    name: str
    table: np.ndarray  # (256, 3) uint8

    def __call__(self, values: np.ndarray) -> np.ndarray:
        """(H, W) in [0, 1] -> (H, W, 3) uint8."""
        index = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0) * 255.0 + 0.5
        return self.table[index.astype(np.intp)]

    def css_gradient(self, stops: int = 11) -> str:
        """A CSS linear-gradient of the colormap, left (0) to right (1): the HTML colour bar."""
        colours = [self.table[round(i * 255 / (stops - 1))] for i in range(stops)]
        return (
            "linear-gradient(to right, "
            + ", ".join(f"rgb({r},{g},{b})" for r, g, b in colours)
            + ")"
        )


def jet(values: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8 with the classic jet colormap (blue -> red)."""
    x = np.clip(values, 0.0, 1.0)[..., None] * 4.0
    rgb = np.clip(1.5 - np.abs(x - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


DEFAULT_COLORMAP = "jet"  # built in: works without matplotlib


@cache
def colormap(name: str = DEFAULT_COLORMAP) -> Colormap:
    """``jet`` (built in), or any colormap matplotlib knows when it is installed."""
    if name == DEFAULT_COLORMAP:
        return Colormap(name, jet(np.linspace(0.0, 1.0, 256)))
    try:
        import matplotlib
    except ImportError:
        raise ValueError(
            f"colormap {name!r} needs matplotlib (pip install 'fdpipe[report]'); "
            f"without it only {DEFAULT_COLORMAP!r} is available"
        ) from None
    try:
        found = matplotlib.colormaps[name]
    except KeyError:
        raise ValueError(
            f"unknown colormap {name!r}; matplotlib has e.g. viridis, inferno, magma, turbo"
        ) from None
    rgba = found(np.linspace(0.0, 1.0, 256))
    return Colormap(name, (rgba[:, :3] * 255.0 + 0.5).astype(np.uint8))


__all__ = [
    "DEFAULT_COLORMAP",
    "MINMAX",
    "PIXEL_LEVEL",
    "Colormap",
    "Display",
    "colormap",
    "display_for",
    "jet",
    "parse_display",
]
