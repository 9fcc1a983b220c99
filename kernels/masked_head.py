"""Scores of the target classes for channel-masked activations, re-running only the head.

METHODS.md section 1 step 4 and section 2.5 (Ablation-CAM) need these scores; this module is the
plain, explicit evaluation that section 5's exact acceleration must reproduce.

Every scorer has the same call: ``scorer(activations (B,K,h,w), masks (B,M,K), classes (B,T))``
returns ``(B,T,M)``: the head output for class ``classes[b,t]`` on ``activations[b]`` with channel
``k`` multiplied by ``masks[b,m,k]``. ``probabilities=True`` scores softmax probabilities instead
of logits. ``budget`` bounds the masked tensors held at once (``fdpipe.kernels.budget``).
"""

from __future__ import annotations

from typing import Protocol

import torch
from fdpipe.kernels.budget import MemoryBudget
from torch import Tensor, nn


class MaskedHeadScorer(Protocol):
    name: str
    ran: set[str]  # the paths that scored masks since it was built: what a run record names

    def __call__(
        self,
        activations: Tensor,
        masks: Tensor,
        classes: Tensor,
        *,
        extras: tuple[Tensor, ...] = (),
        probabilities: bool = False,
        budget: MemoryBudget | None = None,
    ) -> Tensor: ...


def select_scores(logits: Tensor, classes: Tensor, probabilities: bool) -> Tensor:
    """logits (..., N), classes (..., T) -> (..., T) logits or softmax probabilities."""
    values = logits.softmax(-1) if probabilities else logits
    return values.gather(-1, classes)


class ExplicitMaskedHead:
    """Reference scorer: materialises each masked activation tensor and runs the head on it.

    ``chunk`` masked tensors go through the head at once (the authors' code uses 128), fewer
    where ``budget`` cannot hold that many.
    """

    name = "torch-explicit"

    def __init__(self, head: nn.Module, chunk: int = 128) -> None:
        self.head = head
        self.chunk = chunk
        self.ran: set[str] = set()

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
        self.ran.add(self.name)
        batch, n_masks = masks.shape[:2]
        out = activations.new_empty(batch, classes.shape[1], n_masks)
        chunk = self.chunk
        if budget is not None:  # a masked copy of one image's activations, and the head's work
            row = 3 * activations[0].numel() * activations.element_size()
            chunk = min(chunk, budget.rows("masked-head", row, n_masks, self.chunk))
        for b in range(batch):
            for start in range(0, n_masks, chunk):
                part = masks[b, start : start + chunk]
                masked = activations[b] * part[:, :, None, None]
                repeated = tuple(e[b : b + 1].expand(len(part), *e.shape[1:]) for e in extras)
                logits = self.head(masked, *repeated)
                picked = select_scores(logits, classes[b].expand(len(part), -1), probabilities)
                out[b, :, start : start + len(part)] = picked.T
        return out
