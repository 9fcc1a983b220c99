"""The energy-based pointing game against Quantus's RelevanceMassAccuracy and by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fdpipe.evaluation.boxes import Box
from fdpipe.evaluation.energy import box_mask, energy_pointing, energy_share
from fdpipe.kernels.postprocess import place_map


def test_energy_share_by_hand() -> None:
    saliency = torch.zeros(4, 6)
    saliency[1, 1] = 3.0
    saliency[3, 5] = 1.0
    inside = box_mask([Box("a", x0=0, y0=0, x1=2, y1=1)], (4, 6))
    assert inside.sum() == 6
    assert energy_share(saliency, inside) == pytest.approx(0.75)
    assert np.isnan(energy_share(torch.zeros(4, 6), inside))


def test_agrees_with_quantus(rng: np.random.Generator) -> None:
    quantus = pytest.importorskip("quantus")
    native = torch.from_numpy(rng.random((7, 7)).astype(np.float32))
    size = (60, 80)
    boxes = [Box("bus", x0=10, y0=20, x1=30, y1=40), Box("bus", x0=25, y0=5, x1=70, y1=12)]
    ours = energy_pointing(native, size, boxes)
    placed = place_map(native, size).numpy()[None, None]
    mask = box_mask(boxes, size).numpy()[None, None]
    theirs = quantus.RelevanceMassAccuracy(disable_warnings=True).evaluate_batch(placed, mask)
    assert ours == pytest.approx(float(theirs[0]), rel=1e-5)
