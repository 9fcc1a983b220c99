"""Score-CAM: softmax over channels of the logits of channel-masked inputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fdpipe.kernels.base import CAMMethod
from fdpipe.kernels.postprocess import minmax
from fdpipe.kernels.state import LayerState
from torch import Tensor

SCORECAM_MASK_EPS = 1e-8


class ScoreCAM(CAMMethod):
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
