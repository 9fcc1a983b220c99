"""The shape every CAM method shares: channel weights -> ReLU(sum_k w_k A^k) -> step 7."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from fdpipe.kernels.postprocess import native_map, upsample_map
from fdpipe.kernels.state import LayerState
from torch import Tensor


@dataclass
class CAMResult:
    native: Tensor  # (B, T, h, w) min-max normalised map at the layer's resolution
    maps: Tensor  # (B, T, H, W) the same map at input resolution (SPEC step 7)
    weights: Tensor | None = None  # (B, T, K) channel weights, where the method has them
    scores: Tensor | None = None  # (B, T, K or G) the perturbation scores behind the weights


@dataclass
class RawCAM:
    raw: Tensor  # (B, T, h, w) before ReLU and normalisation
    weights: Tensor | None = None
    scores: Tensor | None = None


class CAMMethod(ABC):
    name: ClassVar[str]

    def __call__(self, state: LayerState) -> CAMResult:
        raw = self.raw_map(state)
        native = native_map(raw.raw)
        return CAMResult(native, upsample_map(native, state.input_size), raw.weights, raw.scores)

    def raw_map(self, state: LayerState) -> RawCAM:
        weights, scores = self.channel_weights(state)
        return RawCAM(weighted_sum(weights, state.activations), weights, scores)

    @abstractmethod
    def channel_weights(self, state: LayerState) -> tuple[Tensor, Tensor | None]:
        """(B, T, K) weights and the (B, T, K) scores they came from (None for gradient methods)."""

    def options(self) -> dict[str, object]:
        """The method's parameters, recorded with every output."""
        return {}


def weighted_sum(weights: Tensor, activations: Tensor) -> Tensor:
    """sum_k w[b,t,k] A[b,k] -> (B, T, h, w)."""
    return torch.einsum("btk,bkhw->bthw", weights, activations)
