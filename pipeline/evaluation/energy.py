"""The energy-based pointing game (Score-CAM, Wang et al., CVPRW 2020; METHODS.md section 4).

Instead of the map's single peak, the share of its energy inside the object: the map is placed
on the original image as for the pointing game (bilinear, min-max to [0, 1], zero outside a
crop), and the score is the sum of its values over the pixels of the class's boxes (their
union) divided by its sum over the image. A map that is zero everywhere scores NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from fdpipe.evaluation.boxes import Box
from fdpipe.kernels.postprocess import place_map
from torch import Tensor


def box_mask(boxes: Sequence[Box], size: tuple[int, int]) -> Tensor:
    """(H, W) bool: the pixels of any of ``boxes`` (0-based inclusive corners)."""
    mask = torch.zeros(size, dtype=torch.bool)
    for box in boxes:
        mask[box.y0 : box.y1 + 1, box.x0 : box.x1 + 1] = True
    return mask


def energy_share(saliency: Tensor, inside: Tensor) -> float:
    """The share of the non-negative map ``saliency``'s sum that lies where ``inside`` is true."""
    total = saliency.sum()
    return float(saliency[inside].sum() / total) if total > 0 else float("nan")


def energy_pointing(
    native: Tensor,
    size: tuple[int, int],
    boxes: Sequence[Box],
    box: tuple[float, float, float, float] | None = None,
) -> float:
    """The energy share in ``boxes`` of a (h, w) map on an image of ``size`` (H, W); ``box``:
    the part of the image the model saw, when it saw a crop."""
    return energy_share(place_map(native, size, box), box_mask(boxes, size))
