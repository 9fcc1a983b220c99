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
