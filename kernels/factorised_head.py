"""Exact fast masked-head scores (METHODS.md section 5).

The head's first channel-mixing op is factorised per channel.

When only per-channel operations (ReLU, pooling, flatten, eval dropout) lie between the target
layer and the first channel-mixing op L, masking channel k commutes with them and
``L(mask * A) = sum_k mask_k L_k(A^k) + bias``. The K per-channel contributions ``L_k(A^k)`` are
computed once per image and every mask costs a (masks x contributions) product. Only the target
class rows of the last Linear are evaluated unless softmax probabilities (all logits) are asked.

Both modules here take ``(activations, masks, classes, *extras)`` and return ``(B, T, M)`` scores,
so the same module is the PyTorch runner and the source of the masked-head ONNX graph.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from fdpipe.kernels.budget import MASK_GRANULE, MemoryBudget
from fdpipe.kernels.masked_head import ExplicitMaskedHead, select_scores
from torch import Tensor, nn
from torch.fx.passes.shape_prop import ShapeProp

log = logging.getLogger(__name__)

# Ops with op(m * x) == m * op(x) for a per-channel factor m >= 0.
PER_CHANNEL = (
    nn.ReLU,
    nn.Dropout,
    nn.Identity,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
ELEMENTWISE = (nn.ReLU, nn.Dropout, nn.Identity)  # also fine on flattened features
RELU_FUNCTIONS = (torch.relu, F.relu)
POOL_FUNCTIONS: dict[object, type[nn.Module]] = {
    F.adaptive_avg_pool2d: nn.AdaptiveAvgPool2d,
    F.adaptive_max_pool2d: nn.AdaptiveMaxPool2d,
}


@dataclass(frozen=True)
class HeadPlan:
    """The head as ``after(mix(before(A)))``, ``mix`` being its first channel-mixing op.

    Linear ``mix``: ``after`` holds the ops up to, not including, ``last`` (the logits Linear;
    ``None`` when ``mix`` itself produces the logits). 1x1 Conv ``mix``: ``after`` holds the
    per-channel ops that turn each output channel into one logit, and ``last`` is ``None``.
    """

    before: nn.Sequential
    mix: nn.Linear | nn.Conv2d
    after: nn.Sequential
    last: nn.Linear | None


def _as_module(node: fx.Node, head: fx.GraphModule) -> nn.Module | None:
    if node.op == "call_module":
        return head.get_submodule(str(node.target))
    if node.op == "call_function" and node.target is torch.flatten:
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return nn.Flatten() if (start, end) == (1, -1) else None
    if node.op == "call_function" and node.target in RELU_FUNCTIONS and len(node.args) == 1:
        return nn.ReLU()
    pool = node.op == "call_function" and node.target in POOL_FUNCTIONS
    if pool and len(node.args) == 2 and not node.kwargs:  # DenseNet's F.adaptive_avg_pool2d
        return POOL_FUNCTIONS[node.target](node.args[1])
    return None


def _chain(head: fx.GraphModule) -> list[tuple[fx.Node, nn.Module]] | None:
    """The head's nodes as modules, when it is one straight chain from activations to logits."""
    placeholders = [n for n in head.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        return None  # extra inputs (a residual over the cut): masking would not commute
    chain: list[tuple[fx.Node, nn.Module]] = []
    previous = placeholders[0]
    for node in head.graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            continue
        if node.op == "output":
            return chain if node.args[0] is previous else None
        module = _as_module(node, head)
        if module is None or node.all_input_nodes != [previous] or len(previous.users) != 1:
            return None
        chain.append((node, module))
        previous = node
    return None


def _is_pointwise_conv(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and module.kernel_size == (1, 1)
        and module.stride == (1, 1)
        and module.padding in ((0, 0), "valid")
        and module.groups == 1
    )


def plan_head(
    head: nn.Module, activation_shape: tuple[int, ...], *, probabilities: bool = False
) -> tuple[HeadPlan | None, str]:
    """Factorisation plan for ``head`` on activations of shape (K, h, w), or None and why not."""
    if not isinstance(head, fx.GraphModule):
        return None, "the head is not a torch.fx graph (a TorchScript head)"
    chain = _chain(head)
    if chain is None:
        return None, "the head is not a single chain of known ops from the activations"
    parameter = next(head.parameters(), torch.empty(0))
    probe = torch.zeros(1, *activation_shape, device=parameter.device, dtype=parameter.dtype)
    ShapeProp(head).propagate(probe)
    mix_at = next(
        (i for i, (_, m) in enumerate(chain) if isinstance(m, nn.Linear) or _is_pointwise_conv(m)),
        None,
    )
    if mix_at is None:
        return None, "no Linear or 1x1 Conv in the head"
    # Not in place: these run on the caller's activations, not on a masked copy.
    before = [nn.ReLU() if isinstance(m, nn.ReLU) else m for _, m in chain[:mix_at]]
    flat_at = next((i for i, m in enumerate(before) if isinstance(m, nn.Flatten)), len(before))
    if not all(isinstance(m, PER_CHANNEL) for m in before[:flat_at]) or not all(
        isinstance(m, ELEMENTWISE) for m in before[flat_at + 1 :]
    ):
        return None, "a channel-mixing op comes before the first Linear/Conv"
    mix = chain[mix_at][1]
    flattened = flat_at < len(before)
    rest = chain[mix_at + 1 :]
    if isinstance(mix, nn.Linear):
        if not flattened or mix.in_features % activation_shape[0]:
            return None, "the first Linear does not read the flattened channels"
        if rest and not isinstance(rest[-1][1], nn.Linear):
            return None, "the head does not end with a Linear"
        middle = [m for _, m in rest[:-1]]
        if not all(isinstance(m, (*ELEMENTWISE, nn.Linear)) for m in middle):
            return None, "an op after the first Linear is neither Linear nor elementwise"
        last = rest[-1][1] if rest else None
        assert last is None or isinstance(last, nn.Linear)  # checked above
        return HeadPlan(nn.Sequential(*before), mix, nn.Sequential(*middle), last), "linear"
    assert isinstance(mix, nn.Conv2d)  # not a Linear: a pointwise conv (mix_at)
    if flattened:
        return None, "the 1x1 conv reads flattened features"
    if probabilities:  # every logit of a 1x1 conv costs what explicit masking does
        return None, "probabilities need every class row of the 1x1 conv"
    after = [m for _, m in rest]
    output_shape = tuple(rest[-1][0].meta["tensor_meta"].shape) if rest else ()
    if (
        not rest
        or not isinstance(after[-1], nn.Flatten)
        or not all(isinstance(m, PER_CHANNEL) for m in after[:-1])
        or output_shape != (1, mix.out_channels)
    ):
        return None, "the 1x1 conv output channels do not map one-to-one to the logits"
    return HeadPlan(nn.Sequential(*before), mix, nn.Sequential(*after), None), "pointwise-conv"


class FactorisedHead(nn.Module):
    """``(activations, masks, classes) -> (B, T, M)`` by the exact factorisation of a plan.

    ``dtype`` (fp32, or bf16/fp16 on hardware with native support) is the type of the big
    products of a Linear head: the per-channel contributions, the masked sums and the Linear
    layers between them (on a low-precision copy of their weights, made once). The target rows
    of the last layer (or all its rows, for probabilities) run in fp32 on the upcast hidden
    features: FD-CAM's scores are differences of nearby logits, and a bf16 logit has an 8-bit
    mantissa. Products with a fp32 result where the hardware allows it: oneDNN and cuBLAS
    accumulate low-precision products in fp32, only their outputs are rounded.
    """

    blocks: Tensor  # buffers, registered when the plan needs them
    mix_bias: Tensor

    def __init__(
        self,
        plan: HeadPlan,
        channels: int,
        probabilities: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.before, self.mix, self.after, self.last = plan.before, plan.mix, plan.after, plan.last
        self.channels = channels
        self.probabilities = probabilities
        self.dtype = dtype
        if isinstance(self.mix, nn.Linear) and (self.last is not None or probabilities):
            # (K, s, O): per-channel blocks contiguous, so the contributions are one batched
            # matmul instead of a strided einsum that copies the whole weight on every call.
            weight = self.mix.weight.detach().view(self.mix.out_features, channels, -1)
            blocks = weight.permute(1, 2, 0).to(dtype).contiguous()
            self.register_buffer("blocks", blocks, persistent=False)
            mix_bias = self._bias(self.mix).detach().to(dtype)
            self.register_buffer("mix_bias", mix_bias, persistent=False)
            # The middle Linear layers in the compute type (a copy: the model keeps its weights).
            self.middle = self.after if dtype == torch.float32 else copy.deepcopy(self.after)
            self.middle.to(dtype)

    def forward(
        self, activations: Tensor, masks: Tensor, classes: Tensor, chunk: int = 0
    ) -> Tensor:
        """Scores of every mask; ``chunk`` > 0 runs the masks through a Linear head that many at
        a time (the contributions are computed once), bounding the (B, chunk, hidden) features."""
        features = self.before(activations)
        per_channel = features.reshape(features.shape[0], self.channels, -1)  # (B, K, s)
        if isinstance(self.mix, nn.Conv2d):
            return self._pointwise_conv(features, per_channel, masks, classes)
        bias = self._bias(self.mix)
        if self.last is None and not self.probabilities:  # the mixing Linear gives the logits
            rows = self.mix.weight.view(self.mix.out_features, self.channels, -1)[classes]
            contributions = torch.einsum("bks,btks->bkt", per_channel, rows)  # rows (B,T,K,s)
            scores = masks @ contributions + bias[classes][:, None, :]
            return scores.transpose(1, 2)
        if self.dtype != torch.float32:  # export and fp32 runs trace no casts
            per_channel, masks = per_channel.to(self.dtype), masks.to(self.dtype)
            bias = self.mix_bias
        contributions = (per_channel.transpose(0, 1) @ self.blocks).transpose(0, 1)  # (B, K, O)
        if chunk <= 0 or chunk >= masks.shape[1]:
            return self._hidden_scores(masks @ contributions + bias, classes)
        parts = [
            self._hidden_scores(part @ contributions + bias, classes)
            for part in masks.split(chunk, dim=1)
        ]
        return torch.cat(parts, dim=2)

    @property
    def chunks_masks(self) -> bool:
        """Whether ``forward`` holds (B, masks, hidden) features: a Linear head with layers
        after its mixing Linear (or all logits)."""
        return hasattr(self, "middle")

    def mask_bytes(self, batch: int) -> int:
        """Bytes one mask of a batch holds in ``forward``'s Linear branch: its mixed features
        and two hidden layers' outputs, in the compute type."""
        widths = [self.mix.weight.shape[0]]
        widths += [m.weight.shape[0] for m in self.middle if isinstance(m, nn.Linear)]
        return batch * 3 * max(widths) * torch.finfo(self.dtype).bits // 8

    def _hidden_scores(self, mixed: Tensor, classes: Tensor) -> Tensor:
        hidden = self.middle(mixed)  # (B, M, H)
        if self.dtype != torch.float32:
            hidden = hidden.float()
        if self.probabilities:
            logits = hidden if self.last is None else self.last(hidden)
            wanted = classes[:, None, :].expand(-1, mixed.shape[1], -1)
            return select_scores(logits, wanted, True).transpose(1, 2)
        assert self.last is not None  # a last Linear is all that is left
        rows, row_bias = self.last.weight[classes], self._bias(self.last)[classes]  # (B, T, H)
        return rows @ hidden.transpose(1, 2) + row_bias[..., None]

    def _pointwise_conv(
        self, features: Tensor, per_channel: Tensor, masks: Tensor, classes: Tensor
    ) -> Tensor:
        # Logit n depends only on conv output channel n: only the target rows are computed.
        rows = self.mix.weight[:, :, 0, 0][classes]  # (B, T, K)
        contributions = rows[..., None] * per_channel[:, None]  # (B, T, K, h*w)
        conv = masks[:, None] @ contributions + self._bias(self.mix)[classes][..., None, None]
        batch, targets, n_masks = conv.shape[:3]
        planes = conv.reshape(batch * targets * n_masks, 1, *features.shape[2:])
        return self.after(planes).view(batch, targets, n_masks)

    @staticmethod
    def _bias(layer: nn.Linear | nn.Conv2d) -> Tensor:
        if layer.bias is not None:
            return layer.bias
        return layer.weight.new_zeros(layer.weight.shape[0])


class ExplicitHead(nn.Module):
    """Plain masked evaluation as one graph: ``(activations, masks, classes, *extras)``."""

    def __init__(self, head: nn.Module, probabilities: bool = False) -> None:
        super().__init__()
        self.head = head
        self.probabilities = probabilities

    def forward(
        self, activations: Tensor, masks: Tensor, classes: Tensor, *extras: Tensor
    ) -> Tensor:
        batch, n_masks = masks.shape[:2]
        masked = (activations[:, None] * masks[..., None, None]).flatten(0, 1)
        repeated = [e[:, None].expand(-1, n_masks, *e.shape[1:]).flatten(0, 1) for e in extras]
        logits = self.head(masked, *repeated).view(batch, n_masks, -1)
        picked = select_scores(
            logits, classes[:, None, :].expand(-1, n_masks, -1), self.probabilities
        )
        return picked.transpose(1, 2)


def masked_head_module(
    head: nn.Module,
    activation_shape: tuple[int, ...],
    *,
    probabilities: bool = False,
    dtype: torch.dtype = torch.float32,
) -> FactorisedHead | ExplicitHead:
    """The fastest exact masked-head module for this head: factorised where the plan holds.

    ``dtype`` applies to a factorised Linear head's products; explicit masking stays fp32.
    """
    plan, reason = plan_head(head, activation_shape, probabilities=probabilities)
    if plan is None:
        log.info("masked head: explicit masking (%s)", reason)
        return ExplicitHead(head, probabilities)
    log.info("masked head: exact factorisation (%s)", reason)
    return FactorisedHead(plan, activation_shape[0], probabilities, dtype)


class FactorisedMaskedHead:
    """The PyTorch ``MaskedHeadScorer`` on top of :func:`masked_head_module`.

    Plans are made per activation shape on first use. Extras, negative mask values (ReLU and
    max-pooling commute only with factors >= 0) and heads without a plan go through
    :class:`ExplicitMaskedHead`, which bounds memory by evaluating masks in chunks.
    """

    def __init__(
        self, head: nn.Module, chunk: int = 128, dtype: torch.dtype = torch.float32
    ) -> None:
        self.head = head
        self.dtype = dtype
        self.name = "torch-factorised" + (
            "" if dtype == torch.float32 else f"({str(dtype).removeprefix('torch.')})"
        )
        self.explicit = ExplicitMaskedHead(head, chunk)
        self.ran: set[str] = set()
        self._modules: dict[tuple[tuple[int, ...], bool], FactorisedHead | None] = {}

    def module_for(
        self, activation_shape: tuple[int, ...], probabilities: bool
    ) -> FactorisedHead | None:
        key = (tuple(activation_shape), probabilities)
        if key not in self._modules:
            module = masked_head_module(
                self.head, key[0], probabilities=probabilities, dtype=self.dtype
            )
            self._modules[key] = module if isinstance(module, FactorisedHead) else None
        return self._modules[key]

    @torch.no_grad()
    def __call__(
        self,
        activations: Tensor,
        masks: Tensor,
        classes: Tensor,
        *,
        extras: tuple[Tensor, ...] = (),
        probabilities: bool = False,
        budget: MemoryBudget | None = None,
    ) -> Tensor:
        module = None if extras else self.module_for(activations.shape[1:], probabilities)
        if module is None or bool((masks < 0).any()):
            self.ran.add(self.explicit.name)
            return self.explicit(
                activations, masks, classes, extras=extras, probabilities=probabilities,
                budget=budget,
            )  # fmt: skip
        chunk = 0
        if budget is not None and module.chunks_masks:
            row = module.mask_bytes(len(activations))
            chunk = budget.rows("masked-head", row, masks.shape[1], MASK_GRANULE)
        self.ran.add(self.name)
        return module(activations, masks, classes, chunk)


__all__ = [
    "ExplicitHead",
    "FactorisedHead",
    "FactorisedMaskedHead",
    "HeadPlan",
    "masked_head_module",
    "plan_head",
]
