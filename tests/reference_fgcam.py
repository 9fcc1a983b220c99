"""Slow reference for FG-CAM (METHODS.md section 3), written apart from fdpipe.kernels.propagation.

One image and one relevance map at a time, float64, explicit loops over output positions: each
output unit hands its relevance to the inputs of its window in proportion to their contributions.
Only the network's layers (their weights and forward) are shared with the code under test.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _pad(x: Tensor, padding: int) -> Tensor:
    return F.pad(x, (padding, padding, padding, padding))


def _ratio(relevance: Tensor, total: Tensor) -> Tensor:
    """relevance / total, 0 where nothing contributed."""
    return torch.where(total != 0, relevance / torch.where(total != 0, total, 1.0), 0.0)


def conv_relevance(
    relevance: Tensor,  # (O, h, w)
    x: Tensor,  # (C, H, W)
    conv: nn.Conv2d,
    bounds: tuple[float, float] | None = None,  # (L, H) for the image-input rule
) -> Tensor:
    """z+ rule (hidden layers) or bounded-input rule (image), one output position at a time."""
    assert conv.groups == 1 and conv.dilation == (1, 1)
    weight = conv.weight.double()
    (k, _), (s, _), (p, _) = conv.kernel_size, conv.stride, conv.padding
    x = x.double()
    padded = _pad(x, p)
    inside = _pad(torch.ones_like(x), p)  # 1 on real pixels, 0 on the zero padding
    out = torch.zeros_like(padded)
    for i in range(relevance.shape[1]):
        for j in range(relevance.shape[2]):
            rows, cols = slice(i * s, i * s + k), slice(j * s, j * s + k)
            patch = padded[:, rows, cols]
            if bounds is None:
                z = patch[None] * weight.clamp(min=0)
            else:
                low, high = bounds
                mask = inside[:, rows, cols][None]
                z = (
                    patch[None] * weight
                    - low * mask * weight.clamp(min=0)
                    - high * mask * weight.clamp(max=0)
                )
            # Output unit o hands r_o to its inputs in proportion to their terms z[o].
            ratio = _ratio(relevance[:, i, j].double(), z.sum(dim=(1, 2, 3)))
            out[:, rows, cols] += (z * ratio[:, None, None, None]).sum(0)
    return out[:, p : p + x.shape[1], p : p + x.shape[2]]


def pool_relevance(relevance: Tensor, x: Tensor, pool: nn.Module) -> Tensor:
    """Max-pool: all to the (first) arg-max; avg-pool: in proportion to X. Y == 0 gives 0."""
    k, s = pool.kernel_size, pool.stride
    k, s = (k if isinstance(k, int) else k[0]), (s if isinstance(s, int) else s[0])
    assert pool.padding in (0, (0, 0))
    positive = x.double().clamp(min=0)
    out = torch.zeros_like(positive)
    height, width = positive.shape[1:]
    channels = torch.arange(positive.shape[0])
    for i in range(relevance.shape[1]):
        for j in range(relevance.shape[2]):
            r0, c0 = i * s, j * s
            window = positive[:, r0 : min(r0 + k, height), c0 : min(c0 + k, width)]
            r = relevance[:, i, j].double()
            if isinstance(pool, nn.MaxPool2d):
                y, first = window.flatten(1).max(dim=1)
                di, dj = first // window.shape[2], first % window.shape[2]
                # X * dY/dX * r / Y at the arg-max, where X == Y
                out[channels, r0 + di, c0 + dj] += torch.where(y > 0, r, 0.0)
            else:
                y = window.sum(dim=(1, 2)) / (k * k)
                region = out[:, r0 : r0 + window.shape[1], c0 : c0 + window.shape[2]]
                region += window * (1.0 / (k * k)) * _ratio(r, y)[:, None, None]
    return out


def fire_relevance(relevance: Tensor, x: Tensor, fire: nn.Module) -> Tensor:
    squeezed = torch.relu(fire.squeeze(x[None]))[0]
    e1 = fire.expand1x1.out_channels
    to_squeeze = conv_relevance(relevance[:e1], squeezed, fire.expand1x1) + conv_relevance(
        relevance[e1:], squeezed, fire.expand3x3
    )
    return conv_relevance(to_squeeze, x, fire.squeeze)


def layer_inputs(layers: list[nn.Module], image: Tensor) -> list[Tensor]:
    """The input of every layer, copied (the torchvision ReLUs work in place)."""
    inputs, x = [], image[None]
    for layer in layers:
        inputs.append(x[0].clone())
        x = layer(x.clone())
    inputs.append(x[0].clone())
    return inputs


def fgcam_reference(
    layers: list[nn.Module], image: Tensor, weights: Tensor, stop: int = 0
) -> tuple[Tensor, Tensor]:
    """Components w_k A^k at the output of ``layers`` pushed down to the input of layers[stop].

    Returns the relevance there (C, H, W) and the map: channel sum, ReLU, min-max (eps 1e-7).
    """
    inputs = layer_inputs(layers, image)
    relevance = weights.double()[:, None, None] * inputs[-1].double()
    low, high = float(image.min()), float(image.max())
    for index in range(len(layers) - 1, stop - 1, -1):
        layer, x = layers[index], inputs[index]
        if isinstance(layer, nn.Conv2d):
            relevance = conv_relevance(relevance, x, layer, (low, high) if index == 0 else None)
        elif isinstance(layer, nn.MaxPool2d | nn.AvgPool2d):
            relevance = pool_relevance(relevance, x, layer)
        elif hasattr(layer, "expand3x3"):
            relevance = fire_relevance(relevance, x, layer)
        else:
            assert isinstance(layer, nn.ReLU | nn.BatchNorm2d | nn.Dropout)
    raw = relevance.sum(0).clamp(min=0)
    return relevance, (raw - raw.min()) / (raw.max() - raw.min() + 1e-7)
