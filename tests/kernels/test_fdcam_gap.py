"""On a GAP + linear head FD-CAM's switch-on/off scores are the first-order terms (METHODS.md
section 4, "FD-CAM on global-average-pooled heads"): s_k = 2 sum_{l in G_k} w_cl m_l + b_c."""

from __future__ import annotations

import torch
from fdpipe.api import Explainer
from fdpipe.kernels.fdcam import similarity_groups
from torch import nn


def test_scores_are_group_sums_of_weight_times_mean_activation() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), nn.ReLU()),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 6),
    ).eval()  # fmt: skip
    inputs = torch.rand(2, 3, 20, 20)
    explanation = Explainer(model, "fdcam", layer="0", preprocess=None)(inputs)["fdcam"]
    with torch.no_grad():
        activations = model[0](inputs)
    groups = similarity_groups(activations).float()  # (B, K, K)
    head = model[3]
    classes = explanation.classes[:, 0]
    weights = head.weight[classes]  # (B, K): w_c for each image's class
    contribution = weights * activations.mean((-2, -1))  # w_cl m_l
    expected = 2 * torch.einsum("bkl,bl->bk", groups, contribution) + head.bias[classes][:, None]
    assert explanation.scores is not None
    torch.testing.assert_close(explanation.scores[:, 0], expected.detach(), rtol=1e-4, atol=1e-5)
