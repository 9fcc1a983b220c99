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
The masked inputs are built a chunk of channels at a time, sized by ``state.budget``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fdpipe.kernels.base import ChannelWeightsCAM
from fdpipe.kernels.budget import FORWARD_GRANULE
from fdpipe.kernels.postprocess import minmax
from fdpipe.kernels.state import LayerState
from torch import Tensor

SCORECAM_MASK_EPS = 1e-8


class ScoreCAM(ChannelWeightsCAM):
    name = "scorecam"

    def channel_weights(self, state: LayerState) -> tuple[Tensor, Tensor]:
        channels = state.activations.shape[1]
        pixels = state.input_size[0] * state.input_size[1]
        # Per channel: its upsampled mask, the normalised mask, the masked input, a forward pass.
        row = (2 + 3) * pixels * 4 + state.network.input_bytes(tuple(state.inputs.shape[1:]))
        chunk = state.budget.rows(self.name, row, channels, FORWARD_GRANULE)
        scores = []
        for b, (image, targets) in enumerate(zip(state.inputs, state.classes, strict=True)):
            logits = []
            for start in range(0, channels, chunk):
                part = state.activations[b : b + 1, start : start + chunk]
                up = F.interpolate(
                    part, size=state.input_size, mode="bilinear", align_corners=False
                )
                masks = minmax(up, eps=SCORECAM_MASK_EPS)[0]  # (chunk, H, W)
                masked = image[None] * masks[:, None]  # (chunk, 3, H, W)
                logits.append(state.network.logits_in_chunks(masked, min(chunk, FORWARD_GRANULE)))
            scores.append(torch.cat(logits)[:, targets].T)  # (T, K)
        logit_scores = torch.stack(scores)
        return logit_scores.softmax(dim=-1), logit_scores
