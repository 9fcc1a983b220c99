"""Average Drop / Increase in Confidence against the grad-cam library's metrics and by hand."""

from __future__ import annotations

import numpy as np
import torch
from fdpipe.evaluation.confidence import ConfidenceChange, confidence_change
from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence, IncreaseInConfidence
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from torch import nn


def test_drop_and_increase_by_hand() -> None:
    change = ConfidenceChange(torch.tensor([0.5, 0.8]), torch.tensor([[0.25, 0.6], [0.8, 0.2]]))
    assert change.drop.tolist() == [[50.0, 0.0], [0.0, 75.0]]
    assert change.increase.tolist() == [[0.0, 100.0], [0.0, 0.0]]  # O > Y strictly


def test_agrees_with_the_grad_cam_library(
    tiny_classifier: nn.Module, rng: np.random.Generator
) -> None:
    """Theirs is the absolute drop max(0, Y - O) and [O > Y]; ours divides the drop by Y."""
    model = tiny_classifier
    images = torch.from_numpy(rng.standard_normal((3, 3, 16, 16)).astype(np.float32))
    cams = rng.random((3, 2, 16, 16)).astype(np.float32)
    with torch.no_grad():
        clean = model(images)
    ours = confidence_change(model, images, torch.from_numpy(cams), clean)
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in clean.argmax(1)]
    for m in range(2):
        drop = DropInConfidence()(images, cams[:, m], targets, model)
        increase = IncreaseInConfidence()(images, cams[:, m], targets, model)
        mine = (ours.drop[:, m] * ours.clean / 100).numpy()
        np.testing.assert_allclose(mine, drop, atol=1e-6)
        np.testing.assert_array_equal(ours.increase[:, m].numpy() / 100, increase)
