"""A classifier cut in two at the target layer: backbone (image -> activations) and head.

METHODS.md section 1 (the target layer and "the head is everything after it"): the perturbation
methods re-run only the head on masked activations, and the methods that mask the image
(Score-CAM, Group-CAM, section 2) run the whole network on many inputs in chunks.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SplitNetwork(nn.Module):
    """``head(*backbone(x)) == model(x)``.

    The backbone returns the target activations first, then any earlier tensors the head still
    reads (skip connections that jump over the cut); most models have none.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, layer: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.layer = layer
        self._input_bytes: dict[tuple[int, ...], int] = {}

    @property
    def device(self) -> torch.device:
        """Where inputs must be: the device of the (torch) head's parameters."""
        parameter = next(self.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    def features(self, images: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        out = self.backbone(images)
        if isinstance(out, Tensor):
            return out, ()
        return out[0], tuple(out[1:])

    def forward(self, images: Tensor) -> Tensor:
        activations, extras = self.features(images)
        return self.head(activations, *extras)

    @torch.no_grad()
    def input_bytes(self, input_shape: tuple[int, ...]) -> int:
        """Bytes one input of ``input_shape`` holds at most during a forward pass: the input and
        the two largest outputs of any module alive together, measured once on a probe."""
        key = tuple(input_shape)
        if key not in self._input_bytes:
            sizes: list[int] = []

            def record(_module: nn.Module, _args: object, output: object) -> None:
                if isinstance(output, Tensor):
                    sizes.append(output.numel() * output.element_size())

            leaves = [m for m in self.modules() if not list(m.children())]
            hooks = [m.register_forward_hook(record) for m in leaves]
            try:
                parameter = next(self.parameters(), torch.empty(0))
                self(torch.zeros(1, *key, device=self.device, dtype=parameter.dtype))
            finally:
                for hook in hooks:
                    hook.remove()
            largest = sorted(sizes)[-2:]
            self._input_bytes[key] = 4 * math.prod(key) + 2 * sum(largest)
        return self._input_bytes[key]

    @torch.no_grad()
    def logits_in_chunks(self, images: Tensor, chunk: int) -> Tensor:
        """Full forward of many (masked) inputs without holding all their activations at once.

        On a CPU the inputs go in channels-last layout, oneDNN's fast path for convolutions
        (Score-CAM's 32-input chunks on EfficientNet-Lite0: 1.5x, README "Memory and feeding the
        device"); the logits equal the plain layout's to float rounding.
        """
        if images.device.type == "cpu" and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return torch.cat([self(part) for part in images.split(chunk)])
