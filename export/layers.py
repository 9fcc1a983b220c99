"""Target layers: checking a named layer, and finding the default (the last spatial map, or a
vision transformer's last block)."""

from __future__ import annotations

import torch
from fdpipe.export.layout import choose_default_layer
from fdpipe.export.request import ModelError
from torch import Tensor, nn


def check_layer(module: nn.Module, layer: str) -> None:
    names = dict(module.named_modules())
    if layer not in names or layer == "":
        convs = [
            n
            for n, m in names.items()
            if isinstance(m, nn.Conv2d | nn.BatchNorm2d | nn.MaxPool2d | nn.ReLU)
            or (n and "." not in n)
        ]
        raise ModelError(
            f"layer {layer!r} is not a module of this model; for example: {', '.join(convs[-8:])}"
        )


@torch.no_grad()
def default_layer(module: nn.Module, input_shape: tuple[int, int, int]) -> str:
    """The last module (in execution order) whose output is a (B, K, h, w) map with h*w > 1:
    ResNet's ``layer4``, DenseNet's and EfficientNet's ``features``, RegNet's ``trunk_output``;
    for a vision transformer the first norm of its last block (``choose_default_layer``)."""
    seen: list[tuple[str, tuple[int, ...]]] = []
    names = {m: n for n, m in module.named_modules() if n}

    def hook(m: nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, Tensor) and output.ndim in (3, 4):
            seen.append((names[m], tuple(output.shape)))

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        module(torch.zeros(1, *input_shape, device=device_of(module)))
    except Exception as exc:
        raise ModelError(
            f"the model does not run on a (1, {', '.join(map(str, input_shape))}) input: {exc}"
        ) from None
    finally:
        for handle in handles:
            handle.remove()
    layer = choose_default_layer(module, seen, (input_shape[1], input_shape[2]))
    if layer is None:
        raise ModelError(
            "no module of this model gives a (B, K, h, w) feature map or patch tokens: name one "
            "with --layer"
        )
    return layer


def device_of(module: nn.Module) -> torch.device:
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


__all__ = ["check_layer", "default_layer", "device_of"]
