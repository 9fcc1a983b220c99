"""Grad-CAM++ (METHODS.md section 2.2).

Paper: A. Chattopadhyay, A. Sarkar, P. Howlader, V. N. Balasubramanian, "Grad-CAM++: Generalized
Gradient-Based Visual Explanations for Deep Convolutional Networks", WACV 2018, arXiv:1710.11063.

Formula, g = d f_c / d A (logit gradient), S_k = sum_ij A^k_ij::

    a^k_ij = g_ij^2 / (2 g_ij^2 + S_k g_ij^3 + 1e-6),  a^k_ij = 0 where g_ij == 0
    w_k = sum_ij ReLU(g^k_ij) a^k_ij                    L = ReLU(sum_k w_k A^k)

Decisions: the paper derives its higher-order terms for the exponential of the class score,
which lets the second and third derivatives be written as powers of the first; the exponential's
own factor cancels in a^k and only scales every w_k by the same positive number, which the
min-max of step 7 removes. So the code uses the logit gradient throughout, as the grad-cam
library does. The 1e-6 in the denominator and the zero where g == 0 (no 0/0) are the library's
choices; the oracle test compares against it.
"""

from __future__ import annotations

import torch
from fdpipe.kernels.base import ChannelWeightsCAM
from fdpipe.kernels.state import LayerState
from torch import Tensor


class GradCAMPlusPlus(ChannelWeightsCAM):
    name = "gradcampp"

    def channel_weights(self, state: LayerState) -> tuple[Tensor, None]:
        grads = state.gradients  # (B, T, K, h, w)
        sum_activations = state.activations.sum(dim=(-2, -1))[:, None, :, None, None]
        g2 = grads.pow(2)
        alpha = g2 / (2 * g2 + sum_activations * g2 * grads + 1e-6)
        alpha = torch.where(grads != 0, alpha, 0.0)
        return (grads.clamp_min(0) * alpha).sum(dim=(-2, -1)), None
