"""The model-randomisation sanity check (Adebayo et al., NeurIPS 2018; METHODS.md section 4).

Cascading randomisation: the model's parameterised blocks are re-initialised one more at a time,
from the logits down (the classifier, then the last block, ...). After each step every method
explains the same images for the class the trained model predicted, and each map is compared
with the trained model's map of that image by Spearman's rank correlation and SSIM (both on the
input-size maps in [0, 1]). A map that depends on the model falls towards 0 as the cascade goes
down; one that stays high explains the image, not the model.

``stop``: a method whose mean rank correlation has fallen below it is not explained at the
deeper steps (its row ends there): the cascade then costs the expensive methods (Score-CAM's K
forward passes per image and step) only as deep as they need.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from fdpipe.api import Explainer, Explanation
from fdpipe.export.loading import LoadedModel
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity
from torch import Tensor, nn


def cascade_blocks(module: nn.Module, depth: int = 2) -> list[str]:
    """Names of the blocks that hold parameters, top (the output) first: modules that own
    parameters, grouped by the first ``depth`` parts of their path (``features.12``,
    ``classifier.1``), in reverse registration order (the forward order of torchvision's
    and timm's CNNs)."""
    blocks: dict[str, None] = {}
    for name, child in module.named_modules():
        if name and any(True for _ in child.parameters(recurse=False)):
            blocks[".".join(name.split(".")[:depth])] = None
    return list(reversed(blocks))


def randomise(module: nn.Module, block: str, seed: int) -> None:
    """Re-initialise every sub-module of ``block`` in place with its own initialiser
    (``reset_parameters``, as Quantus's MPRT does), from a seeded generator."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for child in module.get_submodule(block).modules():
            reset = getattr(child, "reset_parameters", None)
            if callable(reset):
                reset()
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                child.reset_running_stats()


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho of two maps; 0 where one of them is constant (no ranking to compare)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a.ravel(), b.ravel()).statistic)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two maps in [0, 1] (scikit-image's defaults: 7 x 7 window, data range 1)."""
    return float(structural_similarity(a, b, data_range=1.0))


@dataclass
class Cascade:
    """Per method, per step: per-image similarity of the maps to the trained model's."""

    steps: list[str]  # cumulative: step j has blocks steps[0..j] randomised
    images: list[str]
    rank: dict[str, list[list[float]]] = field(default_factory=dict)  # method -> step -> image
    ssim: dict[str, list[list[float]]] = field(default_factory=dict)
    maps: dict[str, list[Tensor]] = field(default_factory=dict)  # method -> native map per step
    trained: dict[str, Tensor] = field(default_factory=dict)  # method -> first image's map
    class_name: str = ""  # the first image's class, as the trained model predicts it
    probability: float = float("nan")  # and its score there
    stop: float | None = None  # a method's row ends once its mean rank falls below this

    def cells(self) -> dict[str, list[str]]:
        """Per method and step: "rank (SSIM)" means, "–" after its row ended (``stop``)."""
        return {
            label: [f"{r:.3f} ({s:.3f})" for r, s in zip(row["rank"], row["ssim"], strict=True)]
            + ["–"] * (len(self.steps) - len(row["rank"]))
            for label, row in self.means().items()
        }

    def means(self) -> dict[str, dict[str, list[float]]]:
        return {
            label: {
                "rank": [float(np.mean(v)) for v in self.rank[label]],
                "ssim": [float(np.mean(v)) for v in self.ssim[label]],
            }
            for label in self.rank
        }


def _explain(
    model: LoadedModel, methods: Sequence[str], inputs: Tensor, classes: Tensor
) -> dict[str, Explanation]:
    explainer = Explainer(model, list(methods))
    return dict(explainer(inputs, classes=classes[:, None].tolist()))


def cascade(
    model: LoadedModel,
    methods: Sequence[str],
    inputs: Tensor,
    images: Sequence[str],
    *,
    steps: int | None = None,
    seed: int = 0,
    stop: float | None = None,
) -> Cascade:
    """Randomise the top ``steps`` blocks of ``model`` (all by default) one at a time and
    compare each method's maps of ``inputs`` (B, C, H, W) with the trained model's; a method
    stops once its mean rank correlation is below ``stop``."""
    blocks = cascade_blocks(model.module)[:steps]
    with torch.no_grad():
        logits = model.module(inputs)
    classes = logits.argmax(1)
    trained = _explain(model, methods, inputs, classes)
    first = int(classes[0])
    result = Cascade(
        steps=blocks,
        images=list(images),
        class_name=model.class_names[first],
        probability=float(model.scores(logits)[0, first]),
        stop=stop,
    )
    result.trained = {label: e.native[0, 0] for label, e in trained.items()}
    module = copy.deepcopy(model.module)
    active = list(trained)  # the labels, each also its own spec
    for j, block in enumerate(blocks):
        if not active:
            result.steps = blocks[:j]  # every method's map has changed: no deeper step needed
            break
        randomise(module, block, seed + j)
        randomised = replace(model, module=module, weights_id=f"{model.weights_id}+random-{j}")
        for label, explanation in _explain(randomised, active, inputs, classes).items():
            pairs = [
                (trained[label].maps[i, 0].cpu().numpy(), explanation.maps[i, 0].cpu().numpy())
                for i in range(len(inputs))
            ]
            result.rank.setdefault(label, []).append([rank_correlation(a, b) for a, b in pairs])
            result.ssim.setdefault(label, []).append([ssim(a, b) for a, b in pairs])
            result.maps.setdefault(label, []).append(explanation.native[0, 0])
        if stop is not None:
            active = [m for m in active if float(np.mean(result.rank[m][-1])) >= stop]
    return result
