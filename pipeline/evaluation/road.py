"""ROAD: RemOve And Debias (Rong et al., ICML 2022; METHODS.md section 4).

A fraction f of the pixels, the most salient (MoRF) or the least salient (LeRF), is removed and
filled by noisy linear imputation: each removed pixel is the weighted mean of its 8 neighbours
(1/6 for edge neighbours, 1/12 for corner ones, renormalised over the neighbours inside the
image), known neighbours as given, removed ones solved for jointly (one sparse linear system per
mask, every channel a right-hand side), then Gaussian noise is added to the filled pixels. The
score of the class predicted on the clean image is read at each fraction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from fdpipe.evaluation.curves import Classifier, Order, Score, class_scores
from fdpipe.kernels.precision import ieee_fp32
from scipy.sparse import csc_matrix
from scipy.sparse.linalg import spsolve
from torch import Tensor

# (row offset, column offset, weight) of the imputation's neighbours
NEIGHBOURS = (
    (-1, -1, 1 / 12),
    (-1, 0, 1 / 6),
    (-1, 1, 1 / 12),
    (0, -1, 1 / 6),
    (0, 1, 1 / 6),
    (1, -1, 1 / 12),
    (1, 0, 1 / 6),
    (1, 1, 1 / 12),
)
ROAD_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class ROADProtocol:
    fractions: tuple[float, ...] = ROAD_FRACTIONS  # of the pixels removed
    noise: float = 0.01  # standard deviation added to the imputed values (the paper's code)
    score: Score = "probability"
    seed: int = 0  # of the imputation noise: a rerun gives the same figures
    batch_size: int = 64


def noisy_linear_impute(
    image: np.ndarray, removed: np.ndarray, noise: float, rng: np.random.Generator
) -> np.ndarray:
    """``image`` (C, H, W) with the ``removed`` (H, W) pixels imputed from their neighbours."""
    channels, height, width = image.shape
    unknown = np.flatnonzero(removed.ravel())
    result = image.reshape(channels, -1).astype(np.float64)
    if len(unknown) == 0:
        return image.copy()
    variable = np.full(height * width, -1)
    variable[unknown] = np.arange(len(unknown))
    rows, columns = np.divmod(unknown, width)
    diagonal = np.zeros(len(unknown))
    right = np.zeros((len(unknown), channels))
    entries: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for dy, dx, weight in NEIGHBOURS:
        y, x = rows + dy, columns + dx
        inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
        equation = np.flatnonzero(inside)
        neighbour = y[inside] * width + x[inside]
        diagonal[equation] += weight  # the weights are renormalised over inside neighbours
        solved = variable[neighbour] >= 0
        right[equation[~solved]] += weight * result[:, neighbour[~solved]].T
        coupled = equation[solved]
        entries.append((coupled, variable[neighbour[solved]], np.full(len(coupled), -weight)))
    equations = np.concatenate([np.arange(len(unknown)), *(e[0] for e in entries)])
    variables = np.concatenate([np.arange(len(unknown)), *(e[1] for e in entries)])
    values = np.concatenate([diagonal, *(e[2] for e in entries)])
    system = csc_matrix((values, (equations, variables)), shape=(len(unknown),) * 2)
    solution = np.asarray(spsolve(system, right)).reshape(len(unknown), channels)
    result[:, unknown] = solution.T + noise * rng.standard_normal((channels, len(unknown)))
    return result.reshape(image.shape).astype(image.dtype)


def removal_mask(saliency: np.ndarray, fraction: float, order: Order) -> np.ndarray:
    """(H, W) bool: the pixels at or above the (1 - fraction) quantile of the map (MoRF) or of
    its negation (LeRF), numpy's linear interpolation, as the authors' code selects them."""
    ranked = saliency if order == "morf" else -saliency
    return ranked >= np.percentile(ranked, round(100 * (1 - fraction), 9))


@torch.no_grad()
def road_scores(
    classifier: Classifier,
    images: Tensor,
    saliency: Tensor,
    classes: Tensor,
    order: Order,
    protocol: ROADProtocol | None = None,
) -> Tensor:
    """(B, M, F): the class score after removing each fraction of the pixels of ``images``
    (B, C, H, W) by the input-size maps ``saliency`` (B, M, H, W) and imputing them."""
    protocol = protocol or ROADProtocol()
    batch, maps = saliency.shape[:2]
    rng = np.random.default_rng(protocol.seed)
    pixels, cams = images.detach().cpu().numpy(), saliency.detach().cpu().numpy()
    perturbed = np.stack(
        [
            noisy_linear_impute(pixels[b], removal_mask(cams[b, m], f, order), protocol.noise, rng)
            for b in range(batch)
            for m in range(maps)
            for f in protocol.fractions
        ]
    )
    inputs = torch.from_numpy(perturbed).to(images)
    of_image = classes.repeat_interleave(maps * len(protocol.fractions))
    with ieee_fp32():
        scores = torch.cat(
            [
                class_scores(classifier(part), of_image[i : i + len(part)], protocol.score)
                for i, part in zip(
                    range(0, len(inputs), protocol.batch_size),
                    inputs.split(protocol.batch_size),
                    strict=True,
                )
            ]
        )
    return scores.view(batch, maps, len(protocol.fractions))
