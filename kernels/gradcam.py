"""Grad-CAM: w_k = mean_ij dlogit_c / dA^k_ij."""

from __future__ import annotations

from fdpipe.kernels.base import CAMMethod
from fdpipe.kernels.state import LayerState
from torch import Tensor


def gradient_weights(state: LayerState) -> Tensor:
    return state.gradients.mean(dim=(-2, -1))


class GradCAM(CAMMethod):
    name = "gradcam"

    def channel_weights(self, state: LayerState) -> tuple[Tensor, None]:
        return gradient_weights(state), None
