"""Score-CAM (METHODS.md section 2.6).

Paper: H. Wang, Z. Wang, M. Du, F. Yang, Z. Zhang, S. Ding, P. Mardziel, X. Hu, "Score-CAM:
Score-Weighted Visual Explanations for Convolutional Neural Networks", CVPR Workshops 2020,
arXiv:1910.01279.

Formula, with x the preprocessed input (H x W), up() a bilinear resize to H x W
(align_corners=False) and f_c the class logit of the whole network::

    M_k = (up(A^k) - min) / (max - min + 1e-8)          (min, max over the H x W map)
    s_k = f_c(x * M_k)        w = softmax_k(s)        L = ReLU(sum_k w_k A^k)

``scores`` holds the logits s_k, ``weights`` the softmax over the K channels.

Decisions: the paper scores each mask by its increase in confidence over a baseline input; that
baseline term is the same for every channel, and a softmax over channels is unchanged by adding
a constant, so it is left out (as in the grad-cam library). The resize uses align_corners=False;
the grad-cam library uses align_corners=True, so the oracle test swaps in the False version
before comparing. The eps 1e-8 keeps an all-constant channel's mask at 0 instead of NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fdpipe.kernels.base import ChannelWeightsCAM
from fdpipe.kernels.postprocess import minmax
from fdpipe.kernels.state import LayerState
from torch import Tensor

SCORECAM_MASK_EPS = 1e-8


class ScoreCAM(ChannelWeightsCAM):
    name = "scorecam"

    def channel_weights(self, state: LayerState) -> tuple[Tensor, Tensor]:
        up = F.interpolate(
            state.activations, size=state.input_size, mode="bilinear", align_corners=False
        )
        masks = minmax(up, eps=SCORECAM_MASK_EPS)  # (B, K, H, W)
        scores = []
        for image, image_masks, targets in zip(state.inputs, masks, state.classes, strict=True):
            masked = image[None] * image_masks[:, None]  # (K, 3, H, W)
            logits = state.network.logits_in_chunks(masked, state.full_forward_chunk)
            scores.append(logits[:, targets].T)  # (T, K)
        logit_scores = torch.stack(scores)
        return logit_scores.softmax(dim=-1), logit_scores
