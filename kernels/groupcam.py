"""Group-CAM: 32 channel blocks, each scored by revealing the image through its map over a blur."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fdpipe.kernels.base import CAMMethod, RawCAM
from fdpipe.kernels.gradcam import gradient_weights
from fdpipe.kernels.postprocess import minmax_vector
from fdpipe.kernels.state import LayerState
from torch import Tensor
from torchvision.transforms.functional import gaussian_blur


class GroupCAM(CAMMethod):
    name = "groupcam"

    def __init__(self, groups: int = 32, blur_kernel: int = 51, blur_sigma: float = 50.0) -> None:
        self.groups = groups
        self.blur_kernel = blur_kernel
        self.blur_sigma = blur_sigma

    def options(self) -> dict[str, object]:
        return {
            "groups": self.groups,
            "blur_kernel": self.blur_kernel,
            "blur_sigma": self.blur_sigma,
        }

    def raw_map(self, state: LayerState) -> RawCAM:
        alpha = gradient_weights(state)  # (B, T, K)
        weighted = alpha[..., None, None] * state.activations[:, None]  # (B, T, K, h, w)
        group_maps = torch.stack(
            [block.sum(dim=2) for block in weighted.chunk(self.groups, dim=2)], dim=2
        ).clamp_min(0)  # (B, T, G, h, w)
        batch, targets, groups = group_maps.shape[:3]
        up = F.interpolate(
            group_maps.flatten(0, 2)[:, None],
            size=state.input_size,
            mode="bilinear",
            align_corners=False,
        ).view(batch, targets, groups, *state.input_size)
        masks = minmax_vector(up.flatten(-2)).view_as(up)  # no eps: a constant map gives 0
        blurred = gaussian_blur(state.inputs, [self.blur_kernel] * 2, [self.blur_sigma] * 2)
        with torch.no_grad():
            base = state.network(blurred).softmax(-1).gather(1, state.classes)  # (B, T)
            scores = group_maps.new_empty(batch, targets, groups)
            for b in range(batch):
                mixed = state.inputs[b] * masks[b, :, :, None] + blurred[b] * (
                    1 - masks[b, :, :, None]
                )  # (T, G, 3, H, W)
                probs = state.network.logits_in_chunks(
                    mixed.flatten(0, 1), state.full_forward_chunk
                )
                probs = probs.softmax(-1).view(targets, groups, -1)
                scores[b] = probs.gather(
                    2, state.classes[b].view(targets, 1, 1).expand(-1, groups, 1)
                )[..., 0]
        scores = (scores - base[..., None]).clamp_min(0)
        raw = (scores[..., None, None] * group_maps).sum(dim=2)
        return RawCAM(raw, None, scores)

    def channel_weights(self, state: LayerState) -> tuple[Tensor, None]:
        raise NotImplementedError("Group-CAM weights groups of channels, see raw_map")
