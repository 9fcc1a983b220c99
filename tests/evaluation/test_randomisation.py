"""The cascading model-randomisation check on a tiny random CNN and by hand."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from fdpipe.evaluation.randomisation import (
    cascade,
    cascade_blocks,
    randomise,
    rank_correlation,
    ssim,
)
from fdpipe.evaluation.results import cascade_markdown, draw_cascade
from fdpipe.export.loading import from_module
from PIL import Image
from torch import nn


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    features = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
    )  # fmt: skip
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    return nn.Sequential(features, head).eval()


def test_blocks_go_from_the_output_down() -> None:
    assert cascade_blocks(tiny_cnn()) == ["1.2", "0.3", "0.1", "0.0"]


def test_randomise_changes_only_its_block_and_is_seeded() -> None:
    model, again = tiny_cnn(), tiny_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    randomise(model, "0.3", seed=5)
    randomise(again, "0.3", seed=5)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"0.3.weight", "0.3.bias"}
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())


def test_similarities_of_equal_constant_and_opposite_maps(rng: np.random.Generator) -> None:
    a = rng.random((16, 16))
    assert rank_correlation(a, a) == pytest.approx(1.0)
    assert rank_correlation(a, 1 - a) == pytest.approx(-1.0)
    assert rank_correlation(a, np.zeros_like(a)) == 0.0
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, rng.random((16, 16))) < 0.5


def test_cascade_compares_every_step_with_the_trained_maps() -> None:
    model = from_module(tiny_cnn(), layer="0.4", preprocess=None)
    inputs = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    result = cascade(model, ["gradcam"], inputs, ["a", "b"], steps=2)
    assert result.steps == ["1.2", "0.3"]
    assert np.array(result.rank["gradcam"]).shape == (2, 2)  # steps x images
    assert len(result.maps["gradcam"]) == 2 and result.trained["gradcam"].shape == (32, 32)
    # the random head gives other Grad-CAM weights: the maps are no longer the trained ones
    assert np.mean(result.rank["gradcam"][0]) < 0.99
    assert model.module[1][2].weight.equal(tiny_cnn()[1][2].weight)  # the caller's model intact


@pytest.mark.parametrize("stop", [1.01, -1.0])
def test_a_method_stops_once_its_maps_have_changed(stop: float, tmp_path: Path) -> None:
    """``stop``: a method whose mean rank correlation is below it is not explained deeper; its
    row ends there in the tables and the picture. 1.01: every method stops after one step (the
    steps end too); -1: none ever does."""
    model = from_module(tiny_cnn(), layer="0.4", preprocess=None)
    inputs = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    result = cascade(model, ["gradcam", "layercam"], inputs, ["a"], steps=3, stop=stop)
    depth = 1 if stop > 1 else 3
    assert result.steps == ["1.2", "0.3", "0.1"][:depth] and result.stop == stop
    assert all(len(result.rank[m]) == depth for m in ("gradcam", "layercam"))
    mixed = replace(result, steps=["1.2", "0.3", "0.1"])  # as if one row ended early
    mixed.rank = {**result.rank, "layercam": result.rank["layercam"][:1]}
    mixed.ssim = {**result.ssim, "layercam": result.ssim["layercam"][:1]}
    mixed.maps = {**result.maps, "layercam": result.maps["layercam"][:1]}
    cells = mixed.cells()
    assert cells["layercam"][1:] == ["–", "–"] and "–" not in cells["gradcam"][:depth]
    assert any("| `layercam` |" in line and "| – | – |" in line for line in cascade_markdown(mixed))
    draw_cascade(tmp_path / "c.png", mixed, Image.new("RGB", (32, 32)), None)
    assert (tmp_path / "c.png").stat().st_size > 0
