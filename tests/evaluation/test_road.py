"""ROAD against the grad-cam library's implementation (pytorch_grad_cam 1.5.x) and by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fdpipe.evaluation.road import ROADProtocol, noisy_linear_impute, removal_mask, road_scores
from pytorch_grad_cam.metrics.perturbation_confidence import (
    PerturbationConfidenceMetric,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
)
from pytorch_grad_cam.metrics.road import NoisyLinearImputer
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from torch import nn


def test_imputation_is_the_weighted_mean_of_the_neighbours(rng: np.random.Generator) -> None:
    image = rng.standard_normal((2, 9, 11)).astype(np.float32)
    removed = np.zeros((9, 11), bool)
    removed[4, 5] = True  # one pixel: its value is the weighted mean of its 8 known neighbours
    removed[0, 0] = True  # a corner: 3 neighbours, weights renormalised
    filled = noisy_linear_impute(image, removed, 0.0, rng)
    middle = sum(
        w * image[:, 4 + dy, 5 + dx]
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
        if (dy, dx) != (0, 0)
        for w in [1 / 6 if dy == 0 or dx == 0 else 1 / 12]
    )
    np.testing.assert_allclose(filled[:, 4, 5], middle, rtol=1e-5)
    corner = (image[:, 0, 1] / 6 + image[:, 1, 0] / 6 + image[:, 1, 1] / 12) / (5 / 12)
    np.testing.assert_allclose(filled[:, 0, 0], corner, rtol=1e-5)
    assert np.array_equal(filled[:, ~removed], image[:, ~removed])  # known pixels untouched
    noisy = noisy_linear_impute(image, removed, 0.5, np.random.default_rng(1))
    assert not np.allclose(noisy[:, removed], filled[:, removed])


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_masks_take_the_fraction_from_the_right_end(order: str, rng: np.random.Generator) -> None:
    saliency = rng.random((10, 10))
    mask = removal_mask(saliency, 0.3, order)  # type: ignore[arg-type]
    assert mask.sum() == 30
    kept, removed = saliency[~mask], saliency[mask]
    assert (removed.min() >= kept.max()) if order == "morf" else (removed.max() <= kept.min())


@pytest.mark.parametrize(
    ("order", "remover"), [("morf", RemoveMostRelevantFirst), ("lerf", RemoveLeastRelevantFirst)]
)
def test_agrees_with_the_grad_cam_library(
    order: str, remover: type, tiny_classifier: nn.Module, rng: np.random.Generator
) -> None:
    """Noise off (the only random part); their percentile p removes the fraction 1 - p/100."""
    model = tiny_classifier
    images = torch.from_numpy(rng.standard_normal((2, 3, 16, 16)).astype(np.float32))
    cams = rng.random((2, 2, 16, 16)).astype(np.float32)
    with torch.no_grad():
        clean = model(images)
    classes = clean.argmax(1)
    fractions = (0.1, 0.5, 0.9)
    ours = road_scores(
        model, images, torch.from_numpy(cams), classes, order,  # type: ignore[arg-type]
        ROADProtocol(fractions=fractions, noise=0.0),
    )  # fmt: skip
    clean_p = clean.softmax(1).gather(1, classes[:, None])
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes]
    for j, fraction in enumerate(fractions):
        percentile = round(100 * (1 - fraction))
        metric = PerturbationConfidenceMetric(remover(percentile, NoisyLinearImputer(noise=0.0)))
        for m in range(2):
            theirs = metric(images, cams[:, m], targets, model)  # score after - score before
            mine = (ours[:, m, j] - clean_p[:, 0]).numpy()
            np.testing.assert_allclose(mine, theirs, atol=1e-5)  # float32 vs float64 solves
