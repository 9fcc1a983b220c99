"""Plain, slow reference implementations of METHODS.md sections 1-2, apart from fdpipe.kernels.

One image and one class at a time, loops over channels, groups and masks, float64 numpy for the
formulas. The only thing shared with the code under test is the network cut by ``split_at``:
its backbone gives the activations, its head is re-run on masked activations that are built here
one mask at a time (they go through the head in chunks only to keep VGG16's head affordable).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from fdpipe.kernels import SplitNetwork
from fdpipe.kernels.base import CAMResult
from torch import Tensor
from torchvision.transforms.functional import gaussian_blur

TOLERANCE = 2e-4  # float32 kernels vs float64 reference formulas, on maps in [0, 1]
HEAD_CHUNK = 32  # measured fastest per item for both SqueezeNet's and VGG16's heads


@dataclass
class Probe:
    """One preprocessed image seen through a split network."""

    network: SplitNetwork
    image: Tensor  # (3, H, W)
    activations: Tensor  # (K, h, w), the model's dtype
    extras: tuple[Tensor, ...]

    @property
    def acts(self) -> np.ndarray:
        return self.activations.double().numpy()

    @property
    def size(self) -> tuple[int, int]:
        return (self.image.shape[-2], self.image.shape[-1])


@dataclass
class Reference:
    raw: np.ndarray  # (h, w) before ReLU
    native: np.ndarray  # (h, w) step 7 at the layer's resolution
    maps: np.ndarray  # (H, W) step 7 at input resolution
    weights: np.ndarray | None = None  # (K,)
    scores: np.ndarray | None = None  # (K,) or (groups,)


@torch.no_grad()
def probe(network: SplitNetwork, image: Tensor) -> Probe:
    out = network.backbone(image[None])
    acts, extras = (out, ()) if isinstance(out, Tensor) else (out[0], tuple(out[1:]))
    return Probe(network, image, acts[0], extras)


def class_value(logits: Tensor, c: int, probabilities: bool) -> float:
    return float((logits.softmax(-1) if probabilities else logits)[c])


@torch.no_grad()
def head_scores(
    p: Probe, masks: list[np.ndarray], c: int, probabilities: bool = False
) -> list[float]:
    """f_c of the head on A with channel k multiplied by mask[k], for each mask in turn."""
    masked = []
    for mask in masks:
        keep = torch.as_tensor(mask, dtype=p.activations.dtype)
        masked.append(p.activations * keep[:, None, None])
    values = []
    for start in range(0, len(masked), HEAD_CHUNK):
        part = torch.stack(masked[start : start + HEAD_CHUNK])
        extras = tuple(e.expand(len(part), *e.shape[1:]) for e in p.extras)
        for logits in p.network.head(part, *extras):
            values.append(class_value(logits, c, probabilities))
    return values


def clean_score(p: Probe, c: int, probabilities: bool = False) -> float:
    return head_scores(p, [np.ones(p.activations.shape[0])], c, probabilities)[0]


def gradient(p: Probe, c: int) -> np.ndarray:
    """d f_c / d A (K, h, w) by autograd through the head alone."""
    with torch.enable_grad():
        leaf = p.activations[None].clone().requires_grad_(True)
        logit = p.network.head(leaf, *p.extras)[0, c]
        (grad,) = torch.autograd.grad(logit, leaf)
    return grad[0].double().numpy()


@torch.no_grad()
def full_scores(p: Probe, inputs: list[Tensor], c: int, probabilities: bool) -> list[float]:
    values = []
    for start in range(0, len(inputs), 16):
        for logits in p.network(torch.stack(inputs[start : start + 16])):
            values.append(class_value(logits, c, probabilities))
    return values


# ---- step 7 and small helpers --------------------------------------------------------------


def minmax_map(values: np.ndarray, eps: float) -> np.ndarray:
    return (values - values.min()) / (values.max() - values.min() + eps)


def minmax_or_zero(values: np.ndarray) -> np.ndarray:
    """Min-max of a vector; a constant vector gives zeros (METHODS.md section 1 step 5)."""
    span = values.max() - values.min()
    return np.zeros_like(values) if span == 0 else (values - values.min()) / span


def upsample(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    up = F.interpolate(
        torch.from_numpy(values)[None, None], size=size, mode="bilinear", align_corners=False
    )
    return up[0, 0].numpy()


def finish(
    p: Probe,
    raw: np.ndarray,
    weights: np.ndarray | None = None,
    scores: np.ndarray | None = None,
) -> Reference:
    """METHODS.md section 1 step 7: ReLU, min-max (eps 1e-7), bilinear upsample, min-max again."""
    native = minmax_map(np.maximum(raw, 0), 1e-7)
    maps = minmax_map(upsample(native, p.size), 1e-7)
    return Reference(raw, native, maps, weights, scores)


def weighted_map(p: Probe, weights: np.ndarray) -> np.ndarray:
    acts = p.acts
    raw = np.zeros(acts.shape[1:])
    for k in range(len(acts)):
        raw += weights[k] * acts[k]
    return raw


def channel_cam(p: Probe, weights: np.ndarray, scores: np.ndarray | None = None) -> Reference:
    return finish(p, weighted_map(p, weights), weights, scores)


# ---- gradient methods ----------------------------------------------------------------------


def gradcam_weights(p: Probe, c: int) -> np.ndarray:
    grad = gradient(p, c)
    return np.array([grad[k].mean() for k in range(len(grad))])


def gradcam(p: Probe, c: int) -> Reference:
    return channel_cam(p, gradcam_weights(p, c))


def gradcampp(p: Probe, c: int) -> Reference:
    grad, acts = gradient(p, c), p.acts
    weights = np.zeros(len(acts))
    for k in range(len(acts)):
        g, total = grad[k], acts[k].sum()
        a = g**2 / (2 * g**2 + total * g**3 + 1e-6)
        a[g == 0] = 0.0
        weights[k] = (np.maximum(g, 0) * a).sum()
    return channel_cam(p, weights)


def xgradcam(p: Probe, c: int) -> Reference:
    grad, acts = gradient(p, c), p.acts
    weights = np.array(
        [(acts[k] / (acts[k].sum() + 1e-7) * grad[k]).sum() for k in range(len(acts))]
    )
    return channel_cam(p, weights)


def layercam(p: Probe, c: int) -> Reference:
    grad, acts = gradient(p, c), p.acts
    raw = np.zeros(acts.shape[1:])
    for k in range(len(acts)):
        raw += np.maximum(grad[k], 0) * acts[k]
    return finish(p, raw)


# ---- perturbation methods ------------------------------------------------------------------


def ablationcam(p: Probe, c: int) -> Reference:
    channels = p.activations.shape[0]
    masks = []
    for k in range(channels):
        mask = np.ones(channels)
        mask[k] = 0.0
        masks.append(mask)
    clean = clean_score(p, c)
    ablated = np.array(head_scores(p, masks, c))
    weights = (clean - ablated) / clean
    return channel_cam(p, weights, clean - ablated)


def scorecam(p: Probe, c: int) -> Reference:
    acts = p.acts
    inputs = []
    for k in range(len(acts)):
        mask = minmax_map(upsample(acts[k], p.size), 1e-8)
        inputs.append(p.image * torch.from_numpy(mask).to(p.image.dtype))
    logits = np.array(full_scores(p, inputs, c, probabilities=False))
    weights = np.exp(logits - logits.max())
    return channel_cam(p, weights / weights.sum(), logits)


def groupcam(p: Probe, c: int, groups: int = 32) -> Reference:
    alpha, acts = gradcam_weights(p, c), p.acts
    block = -(-len(acts) // groups)  # torch.chunk's contiguous blocks
    blurred = gaussian_blur(p.image[None], [51, 51], [50.0, 50.0])[0]
    group_maps, inputs = [], []
    for start in range(0, len(acts), block):
        group_map = np.zeros(acts.shape[1:])
        for k in range(start, min(start + block, len(acts))):
            group_map += alpha[k] * acts[k]
        group_map = np.maximum(group_map, 0)
        mask = torch.from_numpy(minmax_or_zero(upsample(group_map, p.size))).to(p.image.dtype)
        group_maps.append(group_map)
        inputs.append(p.image * mask + blurred * (1 - mask))
    (base,) = full_scores(p, [blurred], c, probabilities=True)
    scores = np.maximum(np.array(full_scores(p, inputs, c, probabilities=True)) - base, 0)
    raw = sum(score * group_map for score, group_map in zip(scores, group_maps, strict=True))
    return finish(p, raw, None, scores)


# ---- FD-CAM (METHODS.md section 1) ---------------------------------------------------------


def cosine_matrix(acts: np.ndarray) -> np.ndarray:
    """cos(k, l) of the flattened channels; 0 wherever either channel has zero norm.

    Each channel is scaled to unit length first, so proportional channels (common: channels
    active at one position only) get bit-identical cosines and tie at the threshold together,
    where the quotient v_k . v_l / (|v_k| |v_l|) would break the tie by one rounding error.
    """
    vectors = acts.reshape(len(acts), -1)
    units = []
    for vector in vectors:
        norm = np.sqrt((vector**2).sum())
        units.append(vector / norm if norm > 0 else np.zeros_like(vector))
    cosine = np.zeros((len(acts), len(acts)))
    for k in range(len(acts)):
        for l_ in range(len(acts)):
            cosine[k, l_] = units[k] @ units[l_]
    return cosine


def similarity_groups(acts: np.ndarray, threshold: float) -> list[list[int]]:
    cosine = cosine_matrix(acts)
    groups = []
    for k in range(len(acts)):
        q = torch.quantile(torch.from_numpy(cosine[k]), threshold).item()
        groups.append([l_ for l_ in range(len(acts)) if cosine[k, l_] > q])
    return groups


def fdcam(
    p: Probe,
    c: int,
    *,
    threshold: float = 0.95,
    shift: float = 0.5,
    grouping: bool = True,
    scoring: str = "both",
    combination: str = "exp_shift",
    probabilities: bool = False,
) -> Reference:
    acts = p.acts
    channels = len(acts)
    groups = similarity_groups(acts, threshold) if grouping else [[k] for k in range(channels)]
    keep_only, switch_off = [], []
    for group in groups:
        on = np.zeros(channels)
        on[group] = 1.0
        keep_only.append(on)
        switch_off.append(1.0 - on)
    clean = clean_score(p, c, probabilities)
    s_off = clean - np.array(head_scores(p, switch_off, c, probabilities))
    if scoring == "off":
        scores = s_off
    else:
        scores = np.array(head_scores(p, keep_only, c, probabilities)) + s_off
    alpha_hat, s_hat = minmax_or_zero(gradcam_weights(p, c)), minmax_or_zero(scores)
    weights = {
        "product": alpha_hat * s_hat,
        "exp": alpha_hat * np.exp(s_hat),
        "exp_shift": alpha_hat * np.exp(s_hat) - shift,
    }[combination]
    return channel_cam(p, weights, scores)


METHODS = {
    "fdcam": fdcam,
    "gradcam": gradcam,
    "gradcampp": gradcampp,
    "xgradcam": xgradcam,
    "layercam": layercam,
    "ablationcam": ablationcam,
    "scorecam": scorecam,
    "groupcam": groupcam,
}


def assert_matches(result: CAMResult, b: int, t: int, ref: Reference) -> None:
    np.testing.assert_allclose(result.native[b, t].double(), ref.native, atol=TOLERANCE)
    np.testing.assert_allclose(result.maps[b, t].double(), ref.maps, atol=TOLERANCE)
    for got, want in ((result.weights, ref.weights), (result.scores, ref.scores)):
        if want is not None:
            assert got is not None
            scale = np.abs(want).max()
            np.testing.assert_allclose(got[b, t].double(), want, rtol=1e-4, atol=1e-4 * scale)
