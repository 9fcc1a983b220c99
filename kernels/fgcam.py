"""FG-CAM (SPEC 3): a base CAM's per-channel components pushed down to a finer layer or input."""

from __future__ import annotations

import math

import torch
from fdpipe.kernels.base import CAMMethod, CAMResult, RawCAM
from fdpipe.kernels.fdcam import FDCAM
from fdpipe.kernels.gradcam import GradCAM
from fdpipe.kernels.postprocess import native_map, upsample_map
from fdpipe.kernels.propagation import propagate
from fdpipe.kernels.scorecam import ScoreCAM
from fdpipe.kernels.state import LayerState
from torch import Tensor

BASES: dict[str, type[CAMMethod]] = {cls.name: cls for cls in (GradCAM, ScoreCAM, FDCAM)}
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

    def __init__(
        self,
        base: str = "gradcam",
        resolution: str = "input",
        denoise: bool = False,
        **base_options: object,
    ) -> None:
        if base not in BASES:
            raise ValueError(f"unknown FG-CAM base {base!r}; choose from {', '.join(BASES)}")
        self.base = BASES[base](**base_options)
        self.resolution = resolution
        self.denoise = denoise

    def options(self) -> dict[str, object]:
        return {
            "base": self.base.name,
            "resolution": self.resolution,
            "denoise": self.denoise,
            "base_options": self.base.options(),
        }

    def __call__(self, state: LayerState) -> CAMResult:
        raw = self.raw_map(state)
        native = native_map(raw.raw)
        if native.shape[-2:] == state.input_size:  # already at input size: nothing to resample
            return CAMResult(native, native, raw.weights, raw.scores)
        return CAMResult(native, upsample_map(native, state.input_size), raw.weights, raw.scores)

    def channel_weights(self, state: LayerState) -> tuple[Tensor, Tensor | None]:
        return self.base.channel_weights(state)

    def raw_map(self, state: LayerState) -> RawCAM:
        weights, scores = self.channel_weights(state)
        components = weights[..., None, None] * state.activations[:, None]  # (B, T, K, h, w)
        if self.denoise:
            components = denoise(components)
        relevance = propagate(
            state.network, state.inputs, state.activations, components, self.resolution
        )
        return RawCAM(relevance.sum(dim=2), weights, scores)
