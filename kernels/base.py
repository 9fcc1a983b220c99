"""The two method families and the shared post-processing (METHODS.md sections 0-3).

- :class:`CAMMethod`, the raw-map family: a method overrides only ``raw_map(state) -> RawCAM``,
  the map before ReLU and normalisation. Layer-CAM, Group-CAM and FG-CAM are in this family
  directly: none of them ends in one weight per channel times its activation map.
- :class:`ChannelWeightsCAM`, the channel-weights family (a subclass of the first): a method
  overrides only ``channel_weights(state) -> (weights, scores)`` and its raw map is the weighted
  sum ``sum_k w_k A^k``. Grad-CAM, Grad-CAM++, XGrad-CAM, Ablation-CAM, Score-CAM and FD-CAM.

``CAMMethod.__call__`` applies METHODS.md section 1 step 7 to every raw map: ReLU, min-max at the
layer's resolution (the native map); the bilinear resize to the input size and the min-max again
happen when ``CAMResult.maps`` is first read (the dataset job stores native maps only).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar, final

import torch
from fdpipe.kernels.network import SplitNetwork
from fdpipe.kernels.postprocess import native_map, raw_range, upsample_map
from fdpipe.kernels.state import LayerState
from torch import Tensor


@dataclass
class CAMResult:
    native: Tensor  # (B, T, h, w) min-max normalised map at the layer's resolution
    input_size: tuple[int, int]  # (H, W) of the model input
    weights: Tensor | None = None  # (B, T, K) channel weights, where the method has them
    scores: Tensor | None = None  # (B, T, K or G) the perturbation scores behind the weights
    raw_range: Tensor | None = None  # (B, T, 2) min and max of the ReLU'd raw map (its scale)
    final_at_input_size: bool = False  # the method's ``final_at_input_size``

    @cached_property
    def maps(self) -> Tensor:
        """(B, T, H, W): the native map at input resolution (METHODS.md section 1 step 7),
        computed on first use."""
        if self.final_at_input_size and self.native.shape[-2:] == self.input_size:
            return self.native  # already at input size: nothing to resample
        return upsample_map(self.native, self.input_size)


@dataclass
class RawCAM:
    raw: Tensor  # (B, T, h, w) before ReLU and normalisation
    weights: Tensor | None = None
    scores: Tensor | None = None


class CAMMethod(ABC):
    """Raw-map family, and the type of every method: override :meth:`raw_map` only.

    ``final_at_input_size`` is a setting, not an override point: a method whose native map can
    already have the input's size and is then final (FG-CAM at the input layer, METHODS.md
    section 3) sets it, and skips the resize and the second min-max in that case. Every other
    method always runs the full step 7, as the grad-cam library does.
    """

    name: ClassVar[str]
    final_at_input_size: ClassVar[bool] = False

    @final
    def __call__(self, state: LayerState) -> CAMResult:
        raw = self.raw_map(state)
        return CAMResult(
            native_map(raw.raw),
            state.input_size,
            raw.weights,
            raw.scores,
            raw_range(raw.raw),
            self.final_at_input_size,
        )

    @abstractmethod
    def raw_map(self, state: LayerState) -> RawCAM:
        """(B, T, h, w) map before ReLU and normalisation, with weights/scores where they exist."""

    def options(self) -> dict[str, object]:
        """The method's parameters, recorded with every output."""
        return {}

    def check(self, network: SplitNetwork) -> None:
        """Raise ValueError when the options cannot work on ``network`` (before any image)."""
        del network  # most methods run on any network; FG-CAM checks its resolution


class ChannelWeightsCAM(CAMMethod):
    """Channel-weights family: override :meth:`channel_weights` only; raw map = sum_k w_k A^k."""

    @final
    def raw_map(self, state: LayerState) -> RawCAM:
        weights, scores = self.channel_weights(state)
        return RawCAM(weighted_sum(weights, state.activations), weights, scores)

    @abstractmethod
    def channel_weights(self, state: LayerState) -> tuple[Tensor, Tensor | None]:
        """(B, T, K) weights and the (B, T, K) scores they came from (None for gradient methods)."""


def weighted_sum(weights: Tensor, activations: Tensor) -> Tensor:
    """sum_k w[b,t,k] A[b,k] -> (B, T, h, w)."""
    return torch.einsum("btk,bkhw->bthw", weights, activations)
