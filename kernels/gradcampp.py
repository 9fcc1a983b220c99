"""Grad-CAM++: second/third-order gradient weighting of positive gradients."""

from __future__ import annotations

import torch
from fdpipe.kernels.base import CAMMethod
from fdpipe.kernels.state import LayerState
from torch import Tensor


class GradCAMPlusPlus(CAMMethod):
    name = "gradcampp"

    def channel_weights(self, state: LayerState) -> tuple[Tensor, None]:
        grads = state.gradients  # (B, T, K, h, w)
        sum_activations = state.activations.sum(dim=(-2, -1))[:, None, :, None, None]
        g2 = grads.pow(2)
        alpha = g2 / (2 * g2 + sum_activations * g2 * grads + 1e-6)
        alpha = torch.where(grads != 0, alpha, 0.0)
        return (grads.clamp_min(0) * alpha).sum(dim=(-2, -1)), None
