"""Everything the methods share for one batch: activations, logits, targets, lazy gradients.

Implements the common ground of METHODS.md sections 0-2: one backbone pass per batch gives the
target layer's activations A and the clean logits; the target classes default to the top-1
logit (section 0); g = d f_c / d A is computed on demand through the head only, and is shared by
every gradient method (Grad-CAM, Grad-CAM++, XGrad-CAM, Layer-CAM, Group-CAM, FD-CAM step 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from fdpipe.kernels.budget import CPU_CAP, MemoryBudget, default_budget
from fdpipe.kernels.masked_head import ExplicitMaskedHead, MaskedHeadScorer
from fdpipe.kernels.network import SplitNetwork
from torch import Tensor


@dataclass
class LayerState:
    network: SplitNetwork
    inputs: Tensor  # (B, 3, H, W), preprocessed
    activations: Tensor  # (B, K, h, w)
    extras: tuple[Tensor, ...]
    logits: Tensor  # (B, N) on the clean images
    classes: Tensor  # (B, T) target class indices
    scorer: MaskedHeadScorer
    budget: MemoryBudget = field(default_factory=lambda: MemoryBudget(CPU_CAP))
    _gradients: Tensor | None = field(default=None, repr=False)

    def select(self, images: Tensor, classes: Tensor) -> LayerState:
        """The state of the ``images`` (indices) of the batch with other target ``classes``
        (one row each): the backbone pass is shared, gradients are worked out anew."""
        return replace(
            self,
            inputs=self.inputs[images],
            activations=self.activations[images],
            extras=tuple(extra[images] for extra in self.extras),
            logits=self.logits[images],
            classes=classes,
            _gradients=None,
        )

    @property
    def input_size(self) -> tuple[int, int]:
        return (self.inputs.shape[-2], self.inputs.shape[-1])

    @property
    def target_logits(self) -> Tensor:
        return self.logits.gather(1, self.classes)

    @property
    def target_probabilities(self) -> Tensor:
        return self.logits.softmax(1).gather(1, self.classes)

    @property
    def gradients(self) -> Tensor:
        """d logit_c / d A for every target, (B, T, K, h, w), by autograd through the head only."""
        if self._gradients is None:
            with torch.enable_grad():
                leaf = self.activations.detach().requires_grad_(True)
                logits = self.network.head(leaf, *self.extras)
                per_target = []
                n_targets = self.classes.shape[1]
                for t in range(n_targets):
                    # Images are independent in an eval-mode head, so one backward of the sum
                    # gives every image its own gradient.
                    total = logits.gather(1, self.classes[:, t : t + 1]).sum()
                    (grad,) = torch.autograd.grad(total, leaf, retain_graph=t < n_targets - 1)
                    per_target.append(grad)
            self._gradients = torch.stack(per_target, dim=1)
        return self._gradients


def resolve_classes(logits: Tensor, classes: Tensor | list | None, top_k: int) -> Tensor:
    """Explicit classes (same list for all images, or one row per image) or the top-k logits."""
    n_classes = logits.shape[1]
    if classes is None:
        if not 1 <= top_k <= n_classes:
            raise ValueError(f"top_k must be between 1 and {n_classes}, got {top_k}")
        return logits.topk(top_k, dim=1).indices
    chosen = torch.as_tensor(classes, dtype=torch.long, device=logits.device)
    if chosen.ndim == 0:
        chosen = chosen.view(1)
    if chosen.ndim == 1:
        chosen = chosen.expand(logits.shape[0], -1)
    if chosen.shape[0] != logits.shape[0]:
        raise ValueError(f"{chosen.shape[0]} class rows for {logits.shape[0]} images")
    bad = chosen[(chosen < 0) | (chosen >= n_classes)]
    if bad.numel():
        raise ValueError(
            f"class index {bad[0].item()} out of range: valid class indices are 0..{n_classes - 1}"
        )
    return chosen.contiguous()


@torch.no_grad()
def prepare(
    network: SplitNetwork,
    inputs: Tensor,
    *,
    classes: Tensor | list | None = None,
    top_k: int = 1,
    scorer: MaskedHeadScorer | None = None,
    budget: MemoryBudget | None = None,
) -> LayerState:
    """One backbone pass for the batch; every method then works from this state.

    ``budget``: the memory its perturbation work may hold at once (default ``default_budget``).
    """
    activations, extras = network.features(inputs)
    logits = network.head(activations, *extras)
    return LayerState(
        network=network,
        inputs=inputs,
        activations=activations,
        extras=extras,
        logits=logits,
        classes=resolve_classes(logits, classes, top_k),
        scorer=scorer or ExplicitMaskedHead(network.head),
        budget=budget or MemoryBudget(default_budget(inputs.device)),
    )
