"""Grad-CAM (METHODS.md section 2.1).

Paper: R. R. Selvaraju, M. Cogswell, A. Das, R. Vedantam, D. Parikh, D. Batra, "Grad-CAM: Visual
Explanations from Deep Networks via Gradient-based Localization", ICCV 2017, arXiv:1610.02391.

Formula, with A^k the target layer's channel k (h x w) and g = d f_c / d A the gradient of the
class logit f_c::

    w_k = (1 / (h w)) sum_ij g^k_ij        L = ReLU(sum_k w_k A^k)

Decisions: none beyond the shared ones. The target is the pre-softmax logit, as in the paper and
the grad-cam library; the gradient flows through the head only (the backbone is not re-run).
:func:`gradient_weights` is also FD-CAM's alpha (section 1 step 1) and Group-CAM's alpha.
"""

from __future__ import annotations

from fdpipe.kernels.base import ChannelWeightsCAM
from fdpipe.kernels.state import LayerState
from torch import Tensor


def gradient_weights(state: LayerState) -> Tensor:
    """(B, T, K): the spatial mean of d f_c / d A^k for every target."""
    return state.gradients.mean(dim=(-2, -1))


class GradCAM(ChannelWeightsCAM):
    name = "gradcam"

    def channel_weights(self, state: LayerState) -> tuple[Tensor, None]:
        return gradient_weights(state), None
