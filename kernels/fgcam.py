"""FG-CAM (METHODS.md section 3): a base CAM's per-channel components pushed to a finer layer.

Paper: C. Qiu et al., "Fine-Grained and High-Faithfulness Explanations for Convolutional Neural
Networks", arXiv:2303.09171, 2023 (later versions are titled "Empowering CAM-Based Methods with
Capability to Generate Fine-Grained and High-Faithfulness Explanations"). Authors' code:
github.com/dongmo-qcq/FG-CAM.

Formula: take a channel-weights base method's weights w_k and keep the K components separate::

    I_k = w_k A^k                                     (B, T, K, h, w), not summed over k
    I   = denoise(I)                                  optional, rank-d SVD of the (K, h*w) rows
    R   = propagate(I) down to the requested layer    (rules in ``propagation``)
    L   = ReLU(sum_channels R), min-max

The rules are each linear in I, so the relevance that reaches the requested layer is a sum of the
components' contributions.

Decisions: the bases offered are Grad-CAM and Score-CAM, both used in the paper, and FD-CAM,
which fdpipe adds (``BASES``; any channel-weights method would fit). Denoising centres each row
and does not add the row means back, with d = floor(0.1 * min(K, h*w)); a rank of 0 is an error
rather than an all-zero map. The output keeps the requested layer's resolution: at the input
layer the native map is already input-sized and final (``final_at_input_size``) and is not
resized or min-maxed a second time; at a hidden layer it gets the same resize as every method.
"""

from __future__ import annotations

import math

import torch
from fdpipe.kernels.base import CAMMethod, ChannelWeightsCAM, RawCAM
from fdpipe.kernels.fdcam import FDCAM
from fdpipe.kernels.gradcam import GradCAM
from fdpipe.kernels.network import SplitNetwork
from fdpipe.kernels.propagation import backbone_layers, propagate, resolution_index
from fdpipe.kernels.scorecam import ScoreCAM
from fdpipe.kernels.state import LayerState
from torch import Tensor

BASES: dict[str, type[ChannelWeightsCAM]] = {cls.name: cls for cls in (GradCAM, ScoreCAM, FDCAM)}
DENOISE_RANK_FRACTION = 0.1


def denoise(components: Tensor) -> Tensor:
    """Rank-d SVD reconstruction of each (K, h*w) component matrix, rows centred first.

    d = floor(0.1 * min(K, h*w)); the row means are not added back.
    """
    channels, height, width = components.shape[-3:]
    rows = components.flatten(-2)
    centred = rows - rows.mean(dim=-1, keepdim=True)
    rank = math.floor(DENOISE_RANK_FRACTION * min(channels, height * width))
    if rank == 0:
        raise ValueError(
            f"denoising keeps rank floor(0.1 * min({channels}, {height}*{width})) = 0 here, "
            "which would erase the map: use a larger input or denoise=False"
        )
    u, s, vh = torch.linalg.svd(centred, full_matrices=False)
    kept = (u[..., :rank] * s[..., None, :rank]) @ vh[..., :rank, :]
    return kept.view_as(components)


class FGCAM(CAMMethod):
    name = "fgcam"
    final_at_input_size = True

    def __init__(
        self,
        base: str = "gradcam",
        resolution: str = "input",
        denoise: bool = False,
        **base_options: object,
    ) -> None:
        if base not in BASES:
            raise ValueError(f"unknown FG-CAM base {base!r}; choose from {', '.join(BASES)}")
        self.base: ChannelWeightsCAM = BASES[base](**base_options)
        self.resolution = resolution
        self.denoise = denoise

    def options(self) -> dict[str, object]:
        return {
            "base": self.base.name,
            "resolution": self.resolution,
            "denoise": self.denoise,
            "base_options": self.base.options(),
        }

    def check(self, network: SplitNetwork) -> None:
        resolution_index(backbone_layers(network), self.resolution)

    def raw_map(self, state: LayerState) -> RawCAM:
        weights, scores = self.base.channel_weights(state)
        components = weights[..., None, None] * state.activations[:, None]  # (B, T, K, h, w)
        if self.denoise:
            components = denoise(components)
        relevance = propagate(
            state.network, state.inputs, state.activations, components, self.resolution
        )
        return RawCAM(relevance.sum(dim=2), weights, scores)
