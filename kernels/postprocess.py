"""METHODS.md section 1 step 7, shared by all methods: raw map -> native map -> input-size map.

Also the zero-span rule of section 1 step 5 (:func:`minmax_vector`: a constant vector gives
zeros, never NaN) and the eps'd min-max that Score-CAM's masks use (section 2.6).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

MAP_EPS = 1e-7


def minmax(maps: Tensor, eps: float = MAP_EPS) -> Tensor:
    """(x - min) / (max - min + eps) over the last two dims."""
    flat = maps.flatten(-2)
    low = flat.amin(-1, keepdim=True)
    high = flat.amax(-1, keepdim=True)
    return ((flat - low) / (high - low + eps)).view_as(maps)


def minmax_vector(values: Tensor) -> Tensor:
    """Min-max over the last dim; a constant vector becomes all zeros (never NaN)."""
    low = values.amin(-1, keepdim=True)
    span = values.amax(-1, keepdim=True) - low
    safe = span.where(span > 0, 1.0)
    return ((values - low) / safe).where(span > 0, 0.0)


def native_map(raw: Tensor) -> Tensor:
    """ReLU then min-max at the layer's resolution (the map fdpipe stores)."""
    return minmax(raw.clamp_min(0))


def raw_range(raw: Tensor) -> Tensor:
    """(..., 2): min and max of the ReLU'd raw map, the scale that :func:`native_map` divides out
    (``relu(raw) = native * (max - min + eps) + min``): maps compare in strength through it."""
    flat = raw.clamp_min(0).flatten(-2)
    return torch.stack([flat.amin(-1), flat.amax(-1)], dim=-1)


def upsample_map(native: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear (align_corners=False) to ``size`` then min-max again; works on (..., h, w)."""
    lead = native.shape[:-2]
    flat = native.reshape(-1, 1, *native.shape[-2:])
    up = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return minmax(up.reshape(*lead, *size))


def place_map(
    native: Tensor,
    size: tuple[int, int],
    box: tuple[float, float, float, float] | None = None,
    frame: tuple[int, int] | None = None,
) -> Tensor:
    """A (h, w) map on an image of ``size`` (H, W) when the model saw only ``box`` (left, top,
    right, bottom in pixels of an image of ``frame`` (H, W), default ``size``: a centre crop):
    bilinear inside the box as step 7 does, then min-max there; zero outside. Without a box (or
    the whole frame) it is ``upsample_map``. The one way from a stored map to an image: every
    consumer (render, the report's thumbnails, ``read_maps``, evaluate's overlays and pointing
    game) calls it, a thumbnail with the original image's size as ``frame``."""
    height, width = size
    frame_height, frame_width = frame or size
    if box is None or tuple(box) == (0, 0, frame_width, frame_height):
        return upsample_map(native, size)
    sx, sy = width / frame_width, height / frame_height
    left, top, right, bottom = box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy
    ys = ((torch.arange(height, dtype=native.dtype) + 0.5 - top) / (bottom - top)) * 2 - 1
    xs = ((torch.arange(width, dtype=native.dtype) + 0.5 - left) / (right - left)) * 2 - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]
    sampled = F.grid_sample(
        native[None, None], grid, mode="bilinear", padding_mode="border", align_corners=False
    )[0, 0]
    inside = (grid[0].abs() <= 1).all(-1)
    values = sampled[inside]
    if values.numel() == 0:  # a box smaller than a pixel of this image: nothing to show
        return torch.zeros_like(sampled)
    low, high = values.amin(), values.amax()
    scaled = (sampled - low) / (high - low + MAP_EPS)
    return torch.where(inside, scaled, torch.zeros_like(scaled))
