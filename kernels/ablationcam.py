"""Ablation-CAM (METHODS.md section 2.5).

Paper: S. Desai, H. G. Ramaswamy, "Ablation-CAM: Visual Explanations for Deep Convolutional
Network via Gradient-free Localization", WACV 2020. It has no arXiv version.

Formula, with f_c(A) the class logit computed by the head from the layer's activations and
A^(k) the activations with channel k set to zero::

    s_k = f_c(A) - f_c(A^(k))        w_k = s_k / f_c(A)        L = ReLU(sum_k w_k A^k)

``scores`` holds the drops s_k, ``weights`` the w_k.

Decisions: only the head after the target layer is re-run on the K ablated activation tensors
(through ``state.scorer``, exactly: METHODS.md section 5); the image and the backbone are not,
which gives the same logits as re-running the whole network. The division by the clean logit is
the paper's and is not guarded: a target whose clean logit is negative flips the sign of every
weight, and one whose clean logit is exactly 0 gives non-finite weights.
"""

from __future__ import annotations

import torch
from fdpipe.kernels.base import ChannelWeightsCAM
from fdpipe.kernels.state import LayerState
from torch import Tensor


class AblationCAM(ChannelWeightsCAM):
    name = "ablationcam"

    def channel_weights(self, state: LayerState) -> tuple[Tensor, Tensor]:
        batch, channels = state.activations.shape[:2]
        ablate_one = 1 - torch.eye(
            channels, dtype=state.activations.dtype, device=state.activations.device
        )
        masks = ablate_one.expand(batch, -1, -1)
        ablated = state.scorer(
            state.activations, masks, state.classes, extras=state.extras, budget=state.budget
        )
        clean = state.target_logits[..., None]
        drop = clean - ablated
        return drop / clean, drop
