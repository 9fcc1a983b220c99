"""Layer-CAM: element-wise ReLU(gradient) * activation, summed over channels."""

from __future__ import annotations

from fdpipe.kernels.base import CAMMethod, RawCAM
from fdpipe.kernels.state import LayerState
from torch import Tensor


class LayerCAM(CAMMethod):
    name = "layercam"

    def raw_map(self, state: LayerState) -> RawCAM:
        weighted = state.gradients.clamp_min(0) * state.activations[:, None]
        return RawCAM(weighted.sum(dim=2))

    def channel_weights(self, state: LayerState) -> tuple[Tensor, None]:
        raise NotImplementedError("Layer-CAM weights each position, not each channel")
