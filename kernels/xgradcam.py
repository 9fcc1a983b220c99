"""XGrad-CAM: gradients weighted by each channel's normalised activations."""

from __future__ import annotations

from fdpipe.kernels.base import CAMMethod
from fdpipe.kernels.state import LayerState
from torch import Tensor


class XGradCAM(CAMMethod):
    name = "xgradcam"

    def channel_weights(self, state: LayerState) -> tuple[Tensor, None]:
        acts = state.activations
        share = acts / (acts.sum(dim=(-2, -1), keepdim=True) + 1e-7)
        return (share[:, None] * state.gradients).sum(dim=(-2, -1)), None
