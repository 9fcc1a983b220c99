"""A tiny random classifier: the metrics' tests need a model, not a good one."""

from __future__ import annotations

import pytest
import torch
from torch import nn


@pytest.fixture
def tiny_classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(32, 5),
    ).eval()  # fmt: skip
