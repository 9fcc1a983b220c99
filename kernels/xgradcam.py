"""XGrad-CAM (METHODS.md section 2.3).

Paper: R. Fu, Q. Hu, X. Dong, Y. Guo, Y. Gao, B. Li, "Axiom-based Grad-CAM: Towards Accurate
Visualization and Explanation of CNNs", BMVC 2020, arXiv:2008.02312.

Formula, g = d f_c / d A::

    w_k = sum_ij (A^k_ij / (sum_ij A^k_ij + 1e-7)) g^k_ij       L = ReLU(sum_k w_k A^k)

Decisions: the paper's weight divides by sum_ij A^k_ij, which is 0 for a channel that is all
zero (common after a ReLU). The 1e-7 (as in the grad-cam library) makes such a channel's share,
and so its weight, 0 instead of NaN; for any other channel it changes the weight by a relative
amount of order 1e-7 / sum_ij A^k_ij.
"""

from __future__ import annotations

from fdpipe.kernels.base import ChannelWeightsCAM
from fdpipe.kernels.state import LayerState
from torch import Tensor


class XGradCAM(ChannelWeightsCAM):
    name = "xgradcam"

    def channel_weights(self, state: LayerState) -> tuple[Tensor, None]:
        acts = state.activations
        share = acts / (acts.sum(dim=(-2, -1), keepdim=True) + 1e-7)
        return (share[:, None] * state.gradients).sum(dim=(-2, -1)), None
