"""Insertion and deletion (the RISE protocol, METHODS.md section 4).

Pixels are taken from the most to the least salient (MoRF, stable sort: ties keep pixel order),
or in exactly the reverse order (LeRF). Deletion starts from the image and swaps pixels for a
substrate (zeros of the normalised input by default; RISE's blur; or each channel's mean over the
image); insertion starts from the substrate (RISE's blur by default) and puts the image's pixels
back. Each curve tracks the score of the class predicted on the clean image at n + 1 points, and
its area is (sum(p) - p_0 / 2 - p_n / 2) / n.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from fdpipe.kernels.precision import ieee_fp32
from scipy.ndimage import gaussian_filter
from torch import Tensor

Substrate = Literal["zero", "blur", "mean"]
Order = Literal["morf", "lerf"]
Score = Literal["probability", "logit"]
Classifier = Callable[[Tensor], Tensor]  # (N, C, H, W) inputs -> (N, classes) logits


@dataclass(frozen=True)
class CurveProtocol:
    """The protocol's open choices; the defaults are METHODS.md section 4's."""

    step_fraction: float = 0.0357  # pixels per step: 1,792 at 224 x 224 (RISE's 224 * 8)
    deletion_substrate: Substrate = "zero"
    insertion_substrate: Substrate = "blur"
    blur_kernel: int = 11
    blur_sigma: float = 5.0
    score: Score = "probability"  # softmax probability, or the raw logit
    batch_size: int = 64  # perturbed inputs per forward pass
    order: Order = "morf"  # most relevant first (the protocol), or least relevant first

    def step(self, pixels: int) -> int:
        return max(1, math.ceil(self.step_fraction * pixels))

    def n_steps(self, pixels: int) -> int:
        return math.ceil(pixels / self.step(pixels))


def auc(curves: Tensor) -> Tensor:
    """Trapezoid area under evenly spaced points on [0, 1], over the last dim."""
    n = curves.shape[-1] - 1
    return (curves.sum(-1) - curves[..., 0] / 2 - curves[..., -1] / 2) / n


def rise_blur_kernel(size: int, sigma: float) -> Tensor:
    """RISE's kernel: scipy's Gaussian filter (reflecting edges) applied to a centred impulse."""
    impulse = np.zeros((size, size))
    impulse[size // 2, size // 2] = 1.0
    return torch.from_numpy(gaussian_filter(impulse, sigma))


def substrate(images: Tensor, kind: Substrate, protocol: CurveProtocol) -> Tensor:
    """What removed pixels become: zeros, each channel's mean, or each channel blurred with
    zero padding."""
    if kind == "zero":
        return torch.zeros_like(images)
    if kind == "mean":
        return images.mean((-2, -1), keepdim=True).expand_as(images).clone()
    if kind == "blur":
        size = protocol.blur_kernel
        kernel = rise_blur_kernel(size, protocol.blur_sigma).to(images)
        weight = kernel.expand(images.shape[1], 1, size, size)
        return F.conv2d(images, weight, padding=size // 2, groups=images.shape[1])
    raise ValueError(f"unknown substrate {kind!r}: zero, blur or mean")


def salience_ranks(saliency: Tensor, order: Order = "morf") -> Tensor:
    """(R, H, W) -> (R, H * W): each pixel's position in the most-to-least salient order (MoRF),
    or in its reverse (LeRF)."""
    ordering = saliency.flatten(1).sort(dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(ordering)
    positions = torch.arange(ordering.shape[1], device=ordering.device)
    ranks.scatter_(1, ordering, positions.expand_as(ordering))
    return ranks if order == "morf" else ordering.shape[1] - 1 - ranks


def class_scores(logits: Tensor, classes: Tensor, score: Score) -> Tensor:
    values = logits.softmax(-1) if score == "probability" else logits
    return values.gather(1, classes[:, None])[:, 0]


@dataclass
class Curves:
    """Insertion and deletion curves of M maps for each of B images."""

    classes: Tensor  # (B,) class predicted on the clean image
    insertion: Tensor  # (B, M, n + 1)
    deletion: Tensor  # (B, M, n + 1)

    @property
    def insertion_auc(self) -> Tensor:
        return auc(self.insertion)

    @property
    def deletion_auc(self) -> Tensor:
        return auc(self.deletion)

    @property
    def overall(self) -> Tensor:
        return self.insertion_auc - self.deletion_auc


@torch.no_grad()
def _curves(
    classifier: Classifier,
    starts: Tensor,
    finishes: Tensor,
    ends: Tensor,
    ranks: Tensor,
    classes: Tensor,
    protocol: CurveProtocol,
) -> Tensor:
    """(S, B, M, n + 1) for S (start, finish) pairs (S, B, C, H, W) whose end scores ``ends``
    (S, B, 2) are known: point i takes the i * step top-ranked pixels from ``finish``."""
    kinds, batch, maps, pixels = len(starts), *ranks.shape
    step, n = protocol.step(pixels), protocol.n_steps(pixels)
    curve = ends.new_empty(kinds, batch, maps, n + 1)
    curve[..., 0] = ends[:, :, None, 0]  # the same for every map of an image: computed once
    curve[..., n] = ends[:, :, None, 1]
    # The inner points of every (curve, image, map, step) share the batches.
    axes = (torch.arange(kinds), torch.arange(batch), torch.arange(maps), torch.arange(1, n))
    grid = torch.meshgrid(*(axis.to(ranks.device) for axis in axes), indexing="ij")
    kind_of, image_of, map_of, point_of = (index.flatten() for index in grid)
    for part in torch.arange(len(image_of), device=ranks.device).split(protocol.batch_size):
        k, b, m, i = kind_of[part], image_of[part], map_of[part], point_of[part]
        swapped = (ranks[b, m] < (i * step)[:, None]).view(len(part), 1, *starts.shape[-2:])
        inputs = torch.where(swapped, finishes[k, b], starts[k, b])
        curve[k, b, m, i] = class_scores(classifier(inputs), classes[b], protocol.score)
    return curve


@torch.no_grad()
def insertion_deletion(
    classifier: Classifier,
    images: Tensor,
    saliency: Tensor,
    protocol: CurveProtocol | None = None,
    clean_logits: Tensor | None = None,
) -> Curves:
    """Curves for preprocessed ``images`` (B, C, H, W) and input-size maps (B, M, H, W);
    ``clean_logits`` (B, classes), the classifier's on ``images``, saves that pass when known.

    Everything runs on the images' device, where the classifier must be too, in IEEE FP32.
    """
    with ieee_fp32():
        return _insertion_deletion(
            classifier, images, saliency, protocol or CurveProtocol(), clean_logits
        )


def _insertion_deletion(
    classifier: Classifier,
    images: Tensor,
    saliency: Tensor,
    protocol: CurveProtocol,
    clean_logits: Tensor | None,
) -> Curves:
    if saliency.shape[0] != images.shape[0] or saliency.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"maps {tuple(saliency.shape)} do not fit images {tuple(images.shape)}")
    clean = classifier(images) if clean_logits is None else clean_logits
    classes = clean.argmax(1)
    flat = saliency.to(images.device).flatten(0, 1)
    ranks = salience_ranks(flat, protocol.order).view(*saliency.shape[:2], -1)
    removed = substrate(images, protocol.deletion_substrate, protocol)
    inserted_into = substrate(images, protocol.insertion_substrate, protocol)
    clean_score = class_scores(clean, classes, protocol.score)
    ends = torch.stack(
        [
            torch.stack(
                [class_scores(classifier(inserted_into), classes, protocol.score), clean_score], -1
            ),
            torch.stack(
                [clean_score, class_scores(classifier(removed), classes, protocol.score)], -1
            ),
        ]
    )
    starts, finishes = torch.stack([inserted_into, images]), torch.stack([images, removed])
    insertion, deletion = _curves(classifier, starts, finishes, ends, ranks, classes, protocol)
    return Curves(classes=classes, insertion=insertion, deletion=deletion)
