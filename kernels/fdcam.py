"""FD-CAM, the main method (METHODS.md section 1, steps 1-6; step 7 is in ``postprocess``).

Paper: H. Li, Z. Li, R. Ma, T. Wu, "FD-CAM: Improving Faithfulness and Discriminability of Visual
Explanation for CNNs", ICPR 2022, arXiv:2206.08792. Authors' code: github.com/crishhh1998/FD-CAM.

Formula, with A^k the target layer's channel k, v_k its flattened values, g = d f_c / d A, f_c the
class logit as a function of the layer's activations (only the head is re-run), and m * A the
activations with channel l multiplied by m_l::

    alpha_k = mean_ij g^k_ij                                        (step 1, Grad-CAM)
    cos(k, l) = v_k . v_l / (|v_k| |v_l|), 0 if either norm is 0    (step 2)
    G_k = {l : cos(k, l) > q_k},  q_k = 0.95-quantile of row k      (step 3, linear interpolation)
    s_k = f_c(1_{G_k} * A) + (f_c(A) - f_c((1 - 1_{G_k}) * A))      (step 4, switch-on + off)
    w_k = minmax(alpha)_k * exp(minmax(s)_k) - b,  b = 0.5          (steps 5-6)
    L = ReLU(sum_k w_k A^k)                                         (step 7)

``scores`` holds the s_k, ``weights`` the w_k. :class:`FDCAMOptions` selects the paper's ablation
variants (no grouping, switch-off only, other combinations, threshold, b, probabilities).

Decisions where paper and authors' code leave a choice (METHODS.md section 1):

- the paper averages the switch-on and switch-off scores; the /2 is dropped, because step 5's
  min-max over the K channels removes any positive factor;
- min-max of a vector with no span (all alpha or all scores equal) gives zeros, not the NaN
  that a plain (x - min) / (max - min) gives;
- group membership is strictly above the quantile, the quantile interpolating linearly between
  order statistics as ``torch.quantile`` does; a channel that is all zero has a zero cosine row,
  a quantile of 0 and so an empty group (switching it on scores f_c(0), off scores 0);
- identical masks in an image (repeated groups, empty groups) are scored once: the scores are
  the same as scoring every mask, only cheaper.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from fdpipe.kernels.base import ChannelWeightsCAM
from fdpipe.kernels.gradcam import gradient_weights
from fdpipe.kernels.postprocess import minmax_vector
from fdpipe.kernels.state import LayerState
from torch import Tensor

Combination = Literal["product", "exp", "exp_shift"]
Scoring = Literal["both", "off"]


def channel_cosine(activations: Tensor) -> Tensor:
    """(B, K, h, w) -> (B, K, K) cosine similarity; rows and columns of zero channels are 0."""
    flat = activations.flatten(2)
    norms = flat.norm(dim=-1)
    unit = flat / norms.where(norms > 0, 1.0)[..., None]
    return unit @ unit.transpose(1, 2)


def quantile_linear(values: Tensor, q: float) -> Tensor:
    """``torch.quantile(values, q, dim=-1, keepdim=True)`` (linear), without its size limit."""
    ordered = values.sort(dim=-1).values
    position = q * (values.shape[-1] - 1)
    low = int(position)
    high = min(low + 1, values.shape[-1] - 1)
    return torch.lerp(ordered[..., low : low + 1], ordered[..., high : high + 1], position - low)


def similarity_groups(activations: Tensor, threshold: float = 0.95) -> Tensor:
    """(B, K, K) bool: row k is G_k = {l : cos(k, l) > quantile_threshold(row k)}."""
    cosine = channel_cosine(activations)
    return cosine > quantile_linear(cosine, threshold)


def unique_rows(masks: Tensor, weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per image, the distinct rows of ``masks`` (B, M, K) and each row's index among them, as
    ``torch.unique(masks[b], dim=0, return_inverse=True)`` gives them (in another order):
    ``(B, U, K)`` with zero rows beyond an image's count, and ``(B, M)``.

    ``unique`` along a dim sorts whole rows, which on a GPU was most of FD-CAM's time (3-5 ms per
    image for 1,024 masks of 512 channels on an H100). Here each row gets a 1-D key, a random
    float64 projection (``weights``), and only the keys are sorted, all images at once; the host
    waits once per batch (for the widest count and the check). The result is checked exactly:
    should two different rows ever share a key, the full row sort is used instead.
    """
    batch, n_masks, channels = masks.shape
    if weights is None:
        generator = torch.Generator().manual_seed(0)
        weights = torch.rand(channels, generator=generator, dtype=torch.float64)
    weights = weights.to(masks.device)
    keys = torch.stack([image.to(torch.float64) @ weights for image in masks])  # (B, M)
    ordered, order = keys.sort(dim=1)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    inverse = torch.empty_like(order).scatter_(1, order, starts.cumsum(1) - 1)
    positions = torch.arange(n_masks, device=masks.device).expand(batch, -1)
    first = torch.full_like(order, n_masks)  # the first row of each key; n_masks: no such key
    first.scatter_reduce_(1, inverse, positions, reduce="amin")
    collided = torch.zeros((), dtype=torch.bool, device=masks.device)
    for image, image_first, image_inverse in zip(masks, first, inverse, strict=True):
        collided |= (image[image_first[image_inverse]] != image).any()
    width, collision = torch.stack([starts.sum(1).max(), collided.long()]).tolist()
    if collision:
        return _unique_rows_sorted(masks)
    index = first[:, :width]
    present = index < n_masks
    picked = masks.gather(1, index.clamp_max(n_masks - 1)[..., None].expand(-1, -1, channels))
    return picked * present[..., None], inverse


def _unique_rows_sorted(masks: Tensor) -> tuple[Tensor, Tensor]:
    """``unique_rows`` by ``torch.unique(dim=0)`` per image: the exact, slow way."""
    pairs = [torch.unique(image, dim=0, return_inverse=True) for image in masks]
    padded = masks.new_zeros(len(masks), max(len(u) for u, _ in pairs), masks.shape[-1])
    for b, (unique, _) in enumerate(pairs):
        padded[b, : len(unique)] = unique
    return padded, torch.stack([inverse for _, inverse in pairs])


def score_unique_masks(state: LayerState, masks: Tensor, probabilities: bool) -> Tensor:
    """Scores (B, T, M) for masks (B, M, K), evaluating each distinct mask of an image once."""
    padded, inverse = unique_rows(masks)
    scores = state.scorer(
        state.activations,
        padded,
        state.classes,
        extras=state.extras,
        probabilities=probabilities,
        budget=state.budget,
    )
    return scores.gather(2, inverse[:, None, :].expand(-1, scores.shape[1], -1))


@dataclass(frozen=True)
class FDCAMOptions:
    threshold: float = 0.95  # quantile of each cosine row above which channels join the group
    shift: float = 0.5  # b in w = a_hat * exp(s_hat) - b
    grouping: bool = True  # False: every group is the channel alone
    scoring: Scoring = "both"  # "off": switch-off scores only
    combination: Combination = "exp_shift"
    probabilities: bool = False  # score softmax probabilities instead of logits

    def __post_init__(self) -> None:
        # Refused here so that the CLI, evaluate's specs and the API all refuse them alike.
        if not (isinstance(self.threshold, int | float) and 0.0 <= self.threshold <= 1.0):
            raise ValueError(f"fdcam threshold must be a number in [0, 1], got {self.threshold!r}")
        if not (isinstance(self.shift, int | float) and math.isfinite(self.shift)):
            raise ValueError(f"fdcam shift must be a finite number, got {self.shift!r}")
        if self.scoring not in ("both", "off"):
            raise ValueError(f"fdcam scoring must be 'both' or 'off', got {self.scoring!r}")
        if self.combination not in ("product", "exp", "exp_shift"):
            raise ValueError(
                f"fdcam combination must be product, exp or exp_shift, got {self.combination!r}"
            )


class FDCAM(ChannelWeightsCAM):
    name = "fdcam"

    def __init__(self, **options: object) -> None:
        self.config = FDCAMOptions(**options)  # type: ignore[arg-type]

    def options(self) -> dict[str, object]:
        return asdict(self.config)

    def channel_weights(self, state: LayerState) -> tuple[Tensor, Tensor]:
        cfg = self.config
        acts = state.activations
        batch, channels = acts.shape[:2]
        if cfg.grouping:
            groups = similarity_groups(acts, cfg.threshold)
        else:
            groups = torch.eye(channels, dtype=torch.bool, device=acts.device).expand(batch, -1, -1)
        keep_only = groups.to(acts.dtype)
        switch_off = 1 - keep_only
        masks = switch_off if cfg.scoring == "off" else torch.cat([keep_only, switch_off], dim=1)
        scores = score_unique_masks(state, masks, cfg.probabilities)
        clean = state.target_probabilities if cfg.probabilities else state.target_logits
        off = clean[..., None] - scores[..., -channels:]
        combined = off if cfg.scoring == "off" else scores[..., :channels] + off
        return combine(gradient_weights(state), combined, cfg), combined


def combine(alpha: Tensor, scores: Tensor, cfg: FDCAMOptions) -> Tensor:
    alpha_hat, score_hat = minmax_vector(alpha), minmax_vector(scores)
    if cfg.combination == "product":
        return alpha_hat * score_hat
    if cfg.combination == "exp":
        return alpha_hat * score_hat.exp()
    if cfg.combination == "exp_shift":
        return alpha_hat * score_hat.exp() - cfg.shift
    raise ValueError(f"unknown combination {cfg.combination!r}: product, exp or exp_shift")
