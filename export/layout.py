"""How a target layer's output lies out as a map (METHODS.md section 6).

Every method reads (B, K, h, w) activations. Three layouts are recognised from the output's shape,
the input size and the model, and turned into that map by the split (``export/split.py``):

- ``map``: (B, K, h, w), channels first: CNNs.
- ``channels-last``: (B, h, w, K): timm's Swin stages, ConvNeXt's block norms.
- ``tokens``: (B, N, K) with N = P prefix tokens (class, distillation, register tokens) + h*w
  patch tokens: ViT, DeiT, BEiT, EVA, Hugging Face ViTs, Swin in Hugging Face. The grid comes from
  the patch embedding (the first convolution whose stride is its kernel) at the input size,
  halved by each patch merging; the prefix count from the model (timm's ``num_prefix_tokens``, else
  its class/distillation/register token parameters).

Anything else is refused: a 4-D output whose last two dimensions do not follow the input's aspect
(an attention tensor, a channels-last output read as K = h channels) would give wrong maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fdpipe.export.request import ModelError
from torch import nn

KINDS = ("map", "channels-last", "tokens")
# Parameters that hold prefix tokens (timm, Hugging Face): (1, n, D) each.
PREFIX_PARAMETERS = (
    "cls_token",
    "dist_token",
    "distillation_token",
    "reg_token",
    "register_tokens",
)
# A norm inside each transformer block (timm ``norm1``/``norm2``, Hugging Face
# ``layernorm_before``/``layernorm_after``) marks the blocks for the default layer.
NORM_SUFFIXES = ("LayerNorm", "RMSNorm", "Norm")


@dataclass(frozen=True)
class Layout:
    kind: str = "map"
    grid: tuple[int, int] = (0, 0)  # (h, w) of a channels-last or tokens output
    prefix: int = 0  # tokens before the patch tokens, passed to the head unmasked

    def describe(self) -> str:
        if self.kind == "tokens":
            return f"tokens: {self.prefix} prefix + {self.grid[0]}x{self.grid[1]} patches"
        return self.kind


def _follows_input(h: int, w: int, size: tuple[int, int], slack: float = 2.0) -> bool:
    """(h, w) could be the input's (H, W) divided by one stride s (each side within ``slack``
    cells of H/s, W/s: padding and rounding)."""
    height, width = size
    low = max((h - slack) / height, (w - slack) / width, 0.0)
    high = min((h + slack) / height, (w + slack) / width)
    return low < high


def patch_stride(model: nn.Module) -> tuple[int, int] | None:
    """The stride of the patch embedding: the first convolution whose stride equals its kernel."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.stride == module.kernel_size:
            stride = tuple(module.stride)
            if stride != (1, 1):
                return (int(stride[0]), int(stride[1]))
    return None


def prefix_tokens(model: nn.Module) -> int:
    count = getattr(model, "num_prefix_tokens", None)
    if isinstance(count, int):
        return count
    return sum(
        int(parameter.shape[1])
        for name, parameter in model.named_parameters()
        if name.rpartition(".")[2] in PREFIX_PARAMETERS and parameter.ndim == 3
    )


def _token_grid(model: nn.Module, tokens: int, size: tuple[int, int]) -> tuple[int, int, int]:
    """(prefix, h, w) for ``tokens`` tokens of a model seeing ``size`` inputs, or ModelError."""
    stride = patch_stride(model)
    if stride is None:
        raise ModelError(
            f"{tokens} tokens, but the model has no patch embedding (a convolution whose "
            f"stride is its kernel) to find their grid"
        )
    prefix = prefix_tokens(model)
    h, w = size[0] // stride[0], size[1] // stride[1]
    grids = []
    for _ in range(8):  # each patch merging halves the grid (rounding up, as Swin pads)
        grids.append((h, w))
        if h * w == tokens - prefix:
            return prefix, h, w
        h, w = -(-h // 2), -(-w // 2)
    raise ModelError(
        f"{tokens} tokens are not {prefix} prefix tokens plus a patch grid (the patch embedding "
        f"gives {grids[0][0]}x{grids[0][1]} at {size[0]}x{size[1]}, then "
        f"{', '.join(f'{a}x{b}' for a, b in grids[1:4])}...)"
    )


def detect_layout(model: nn.Module, shape: Sequence[int], size: tuple[int, int]) -> Layout:
    """The layout of a layer output of ``shape`` for inputs of ``size`` (H, W), or ModelError."""
    shape = tuple(int(n) for n in shape)
    if len(shape) == 4:
        if _follows_input(shape[2], shape[3], size):
            return Layout()
        if _follows_input(shape[1], shape[2], size):
            return Layout("channels-last", (shape[1], shape[2]))
        raise ModelError(
            f"gives {shape}: neither its last two dimensions (B, K, h, w) nor its middle two "
            f"(B, h, w, K) follow the {size[0]}x{size[1]} input, so no dimension pair is the "
            f"image's grid (an attention or other non-spatial tensor)"
        )
    if len(shape) == 3:
        prefix, h, w = _token_grid(model, shape[1], size)
        return Layout("tokens", (h, w), prefix)
    raise ModelError(f"gives {shape}: not a (B, K, h, w) map, (B, h, w, K) or (B, N, K) tokens")


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith(NORM_SUFFIXES)


def choose_default_layer(
    model: nn.Module, outputs: Sequence[tuple[str, tuple[int, ...]]], size: tuple[int, int]
) -> str | None:
    """The default target layer from the modules' outputs in execution order.

    The last map in execution order, unless it is tokens with prefix tokens (a ViT whose head
    reads its class token only, so the last maps' patch tokens do not reach the logits): then the
    first norm of the last block, as the field does (METHODS.md section 6). A Swin's head pools
    every patch token, as a CNN's pools its last map.
    """
    maps: list[tuple[str, Layout]] = []
    for name, shape in outputs:
        if len(shape) not in (3, 4) or (len(shape) == 4 and shape[2] * shape[3] <= 1):
            continue
        try:
            maps.append((name, detect_layout(model, shape, size)))
        except ModelError:
            continue
    if not maps:
        return None
    if maps[-1][1].prefix == 0:
        return maps[-1][0]
    modules = dict(model.named_modules())
    norms = [name for name, layout in maps if layout.kind == "tokens" and _is_norm(modules[name])]
    by_block: dict[str, list[str]] = {}
    for name in norms:
        by_block.setdefault(name.rpartition(".")[0], []).append(name)
    blocks = [names for names in by_block.values() if len(set(names)) >= 2]
    return blocks[-1][0] if blocks else maps[-1][0]


__all__ = ["KINDS", "Layout", "choose_default_layer", "detect_layout", "patch_stride"]
