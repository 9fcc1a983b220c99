"""Ablation-CAM: relative drop of the class logit when one channel is zeroed."""

from __future__ import annotations

import torch
from fdpipe.kernels.base import CAMMethod
from fdpipe.kernels.state import LayerState
from torch import Tensor


class AblationCAM(CAMMethod):
    name = "ablationcam"

    def channel_weights(self, state: LayerState) -> tuple[Tensor, Tensor]:
        batch, channels = state.activations.shape[:2]
        ablate_one = 1 - torch.eye(
            channels, dtype=state.activations.dtype, device=state.activations.device
        )
        masks = ablate_one.expand(batch, -1, -1)
        ablated = state.scorer(state.activations, masks, state.classes, extras=state.extras)
        clean = state.target_logits[..., None]
        drop = clean - ablated
        return drop / clean, drop
