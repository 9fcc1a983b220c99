"""FG-CAM's relevance rules (METHODS.md section 3) and their walk down a sequential CNN backbone.

Relevance tensors are (B, T, C, h, w): one map per image and target class. Layer inputs are
(B, C, H, W) and shared by the T targets, so every rule computes its denominators once per image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any  # Fire modules are duck-typed: any module with its six children

import torch
import torch.nn.functional as F
from fdpipe.errors import FdpipeError
from fdpipe.kernels.network import SplitNetwork
from fdpipe.kernels.precision import AutocastBackbone
from torch import Tensor, nn
from torch.nn.grad import conv2d_input

SUPPORTED = (
    "FG-CAM supports sequential CNN backbones: VGG11-19 with or without batch norm (and other "
    "plain conv/ReLU/pool stacks such as AlexNet) and SqueezeNet (Fire modules)"
)
MISMATCH_TOLERANCE = 1e-2  # relative norm of (re-run - backbone) activations


def mismatch_tolerance(backbone: nn.Module) -> float:
    """``MISMATCH_TOLERANCE``, or 5 machine epsilons of a reduced-precision backbone's type.

    A bf16 backbone (``AutocastBackbone``, 8-bit mantissa) drifts from the fp32 re-run by 1.6e-2
    on SqueezeNet and 6.8e-3 on VGG16 (emulated, the bundled photos): 5 eps = 3.9e-2 still
    refuses a backbone that does something else (differences of order 1).
    """
    if not isinstance(backbone, AutocastBackbone):
        return MISMATCH_TOLERANCE
    return max(MISMATCH_TOLERANCE, 5 * torch.finfo(backbone.dtype).eps)


PASS_THROUGH = (nn.ReLU, nn.BatchNorm2d, nn.Dropout)
POOLS = (nn.MaxPool2d, nn.AvgPool2d)
FIRE_PARTS = (
    "squeeze",
    "squeeze_activation",
    "expand1x1",
    "expand1x1_activation",
    "expand3x3",
    "expand3x3_activation",
)


class UnsupportedArchitecture(FdpipeError, ValueError):
    """The backbone or layer is outside what FG-CAM's walk knows; the message says what is."""


def safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator, 0 where the denominator is 0 (no relevance to hand on)."""
    return torch.where(denominator == 0, 0.0, numerator / denominator)


def _conv(conv: nn.Conv2d, inputs: Tensor, weight: Tensor) -> Tensor:
    return F.conv2d(inputs, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)


def _spread(conv: nn.Conv2d, weight: Tensor, ratio: Tensor, inputs: Tensor) -> Tensor:
    """W^T Z for every target: the adjoint of the conv, (B, T, O, h, w) -> (B, T, C, H, W)."""
    batch, targets = ratio.shape[:2]
    size = (batch * targets, *inputs.shape[1:])
    back = conv2d_input(
        size, weight, ratio.flatten(0, 1), conv.stride, conv.padding, conv.dilation, conv.groups
    )
    return back.view(batch, targets, *inputs.shape[1:])


def conv_rule(relevance: Tensor, inputs: Tensor, conv: nn.Conv2d) -> Tensor:
    """Hidden conv, positive weights, no bias: Z = I / conv(X, W+); I_in = X * W+^T Z."""
    positive = conv.weight.clamp_min(0)
    ratio = safe_divide(relevance, _conv(conv, inputs, positive)[:, None])
    return inputs[:, None] * _spread(conv, positive, ratio, inputs)


def bounded_input_rule(relevance: Tensor, inputs: Tensor, conv: nn.Conv2d) -> Tensor:
    """First conv on the image: inputs bounded by L = min and H = max of each image.

    Z = I / (conv(X, W) - conv(L, W+) - conv(H, W-)); I_in = X W^T Z - L W+^T Z - H W-^T Z.
    The bounds are taken per image (METHODS.md section 3: of the input tensor), so a map does
    not depend on which images share its batch.
    """
    weight = conv.weight
    positive, negative = weight.clamp_min(0), weight.clamp_max(0)
    low = inputs.amin(dim=(1, 2, 3), keepdim=True).expand_as(inputs)
    high = inputs.amax(dim=(1, 2, 3), keepdim=True).expand_as(inputs)
    denominator = (
        _conv(conv, inputs, weight) - _conv(conv, low, positive) - _conv(conv, high, negative)
    )
    ratio = safe_divide(relevance, denominator[:, None])
    return (
        inputs[:, None] * _spread(conv, weight, ratio, inputs)
        - low[:, None] * _spread(conv, positive, ratio, inputs)
        - high[:, None] * _spread(conv, negative, ratio, inputs)
    )


def pool_rule(relevance: Tensor, inputs: Tensor, pool: nn.Module) -> Tensor:
    """X = ReLU(input), Y = pool(X), I_in = X * (dY/dX)^T (I / Y), 0 where Y == 0.

    (dY/dX)^T is the pool's own backward, which routes a max-pool's share to the arg-max and
    sums overlapping windows.
    """
    batch, targets = relevance.shape[:2]
    positive = inputs.clamp_min(0)
    expanded = positive[:, None].expand(batch, targets, *positive.shape[1:]).flatten(0, 1)
    with torch.enable_grad():
        leaf = expanded.detach().requires_grad_(True)
        pooled = pool(leaf)
        ratio = safe_divide(relevance.flatten(0, 1), pooled.detach())
        (routed,) = torch.autograd.grad(pooled, leaf, ratio)
    return positive[:, None] * routed.view(batch, targets, *positive.shape[1:])


def is_fire(module: nn.Module) -> bool:
    """SqueezeNet's Fire, also as the bare container fx leaves when it traced through it."""
    children = dict(module.named_children())
    return all(part in children for part in FIRE_PARTS)


@dataclass
class FireInputs:
    block: Tensor  # the Fire's input
    squeezed: Tensor  # after the squeeze conv and its ReLU: the input of both expand convs


def fire_forward(fire: Any, inputs: Tensor) -> tuple[Tensor, FireInputs]:
    squeezed = fire.squeeze_activation(fire.squeeze(inputs))
    out = torch.cat(
        [
            fire.expand1x1_activation(fire.expand1x1(squeezed)),
            fire.expand3x3_activation(fire.expand3x3(squeezed)),
        ],
        dim=1,
    )
    return out, FireInputs(inputs, squeezed)


def fire_rule(relevance: Tensor, saved: FireInputs, fire: Any) -> Tensor:
    """Each expand branch gets its own channels of the concatenation; both add at the squeeze."""
    split = fire.expand1x1.out_channels
    squeezed = conv_rule(relevance[:, :, :split], saved.squeezed, fire.expand1x1) + conv_rule(
        relevance[:, :, split:], saved.squeezed, fire.expand3x3
    )
    return conv_rule(squeezed, saved.block, fire.squeeze)


@dataclass
class Layer:
    path: str
    module: nn.Module


def _torch_prefix(backbone: nn.Module, layer: str) -> str:
    """Where the model's modules sit in the backbone: "" or a wrapper's (channels-last copy)."""
    for name, _ in backbone.named_modules():
        if name == layer or name.endswith(f".{layer}"):
            return name.removesuffix(layer)
    raise UnsupportedArchitecture(
        f"the backbone holds no torch module {layer}: FG-CAM walks the torch layers, so an "
        "ONNX Runtime or TensorRT backbone cannot be used for it (use the torch runtime)"
    )


def backbone_layers(network: SplitNetwork) -> list[Layer]:
    """The layers from the image up to the target, for a target ``<stack>.<index>``."""
    stack, _, index = network.layer.rpartition(".")
    if not stack or not index.isdigit():
        raise UnsupportedArchitecture(
            f"{SUPPORTED}; the target layer must be a layer of such a stack (e.g. features.30), "
            f"got {network.layer!r}"
        )
    prefix = _torch_prefix(network.backbone, network.layer)
    layers = []
    for i in range(int(index) + 1):
        path = f"{stack}.{i}"
        try:
            module = network.backbone.get_submodule(prefix + path)
        except AttributeError as exc:
            raise UnsupportedArchitecture(f"{SUPPORTED}; {path} is not in the backbone") from exc
        if not isinstance(module, (nn.Conv2d, *PASS_THROUGH, *POOLS)) and not is_fire(module):
            raise UnsupportedArchitecture(f"{SUPPORTED}; {path} is a {type(module).__name__}")
        if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
            raise UnsupportedArchitecture(f"{SUPPORTED}; {path} pads with {module.padding_mode}")
        layers.append(Layer(path, module))
    if not isinstance(layers[0].module, nn.Conv2d):
        raise UnsupportedArchitecture(f"{SUPPORTED}; the first layer must be a convolution")
    return layers


@torch.no_grad()
def record_inputs(layers: list[Layer], images: Tensor) -> tuple[list[Tensor | FireInputs], Tensor]:
    """Each layer's input (what its rule needs) and the last layer's output."""
    saved: list[Tensor | FireInputs] = []
    x = images
    for layer in layers:
        if is_fire(layer.module):
            x, fire_inputs = fire_forward(layer.module, x)
            saved.append(fire_inputs)
        else:
            saved.append(x)
            x = layer.module(x)
    return saved, x


def layer_rule(relevance: Tensor, saved: Tensor | FireInputs, layer: Layer, first: bool) -> Tensor:
    module = layer.module
    if isinstance(saved, FireInputs):
        return fire_rule(relevance, saved, module)
    if isinstance(module, nn.Conv2d):
        if first:
            return bounded_input_rule(relevance, saved, module)
        return conv_rule(relevance, saved, module)
    if isinstance(module, POOLS):
        return pool_rule(relevance, saved, module)
    return relevance  # ReLU, batch norm, dropout in eval


def resolution_index(layers: list[Layer], resolution: str) -> int:
    """How many layers stay below the propagated relevance: 0 for the input."""
    if resolution == "input":
        return 0
    paths = [layer.path for layer in layers]
    if resolution not in paths:
        raise ValueError(
            f"resolution {resolution!r} is not 'input' nor a layer at or below the target: "
            f"choose 'input' or one of {paths[0]} .. {paths[-1]}"
        )
    return paths.index(resolution) + 1


@torch.no_grad()
def propagate(
    network: SplitNetwork,
    images: Tensor,
    activations: Tensor,
    relevance: Tensor,
    resolution: str,
) -> Tensor:
    """Relevance (B, T, K, h, w) at the target layer -> relevance at ``resolution``."""
    layers = backbone_layers(network)
    stop = resolution_index(layers, resolution)
    if stop == len(layers):
        return relevance
    saved, output = record_inputs(layers, images)
    # The walk re-runs the layers by hand; a backbone that does more than this stack would
    # give different activations, and its maps would silently be wrong. (Relative, not
    # elementwise: another conv algorithm or TF32 on a GPU moves single values a little.)
    mismatch = (output - activations).norm() / activations.norm().clamp_min(1e-12)
    if mismatch > mismatch_tolerance(network.backbone):
        raise UnsupportedArchitecture(
            f"{SUPPORTED}; re-running {layers[0].path} .. {layers[-1].path} on the images does "
            f"not reproduce the backbone's activations at {network.layer}"
        )
    for index in range(len(layers) - 1, stop - 1, -1):
        relevance = layer_rule(relevance, saved[index], layers[index], first=index == 0)
    return relevance
