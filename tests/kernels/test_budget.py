"""Perturbation work chunked by a memory budget: maps do not depend on it (kernels/budget.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fdpipe.export.loading import LoadedModel
from fdpipe.kernels import SplitNetwork, make_method, prepare
from fdpipe.kernels.budget import (
    CPU_CAP,
    FORWARD_GRANULE,
    MASK_GRANULE,
    MemoryBudget,
    available_bytes,
    default_budget,
)
from fdpipe.kernels.factorised_head import FactorisedMaskedHead
from fdpipe.kernels.postprocess import minmax
from fdpipe.kernels.scorecam import SCORECAM_MASK_EPS

SMALL = 96  # full-forward methods on 96 px inputs (5 x 5 SqueezeNet activations)


def squeeze_inputs(squeezenet: LoadedModel, photos: dict, names=("cat", "coffee")) -> torch.Tensor:
    images = torch.stack([squeezenet.preprocess(photos[n]) for n in names])
    return F.interpolate(images, size=(SMALL, SMALL), mode="bilinear")


def run(method: str, network: SplitNetwork, inputs: torch.Tensor, budget: MemoryBudget, **kw):
    state = prepare(network, inputs, top_k=2, budget=budget, **kw)
    return make_method(method)(state)


@pytest.mark.parametrize("method", ["scorecam", "groupcam", "ablationcam", "fdcam"])
def test_maps_do_not_depend_on_the_budget(
    method: str, squeezenet: LoadedModel, squeezenet_net: SplitNetwork, photos: dict
) -> None:
    inputs = squeeze_inputs(squeezenet, photos, ("cat",))
    row = squeezenet_net.input_bytes(tuple(inputs.shape[1:])) + 5 * SMALL * SMALL * 4
    whole = run(method, squeezenet_net, inputs, MemoryBudget(1 << 40))
    budget = MemoryBudget(FORWARD_GRANULE * row * 2)  # two granules of full forwards at once
    chunked = run(method, squeezenet_net, inputs, budget)
    assert torch.equal(chunked.maps, whole.maps)  # bit for bit
    assert torch.equal(chunked.native, whole.native)
    assert torch.equal(chunked.scores, whole.scores)  # type: ignore[arg-type]
    if method in ("scorecam", "groupcam"):
        assert budget.chunks[method] == 2 * FORWARD_GRANULE
    if method != "scorecam":  # (512 single forwards: slow)
        tiny = MemoryBudget(1)  # below one granule: one row at a time, the last bits may move
        torch.testing.assert_close(run(method, squeezenet_net, inputs, tiny).maps, whole.maps)


def test_scorecam_equals_all_masked_inputs_at_once(
    squeezenet: LoadedModel, squeezenet_net: SplitNetwork, photos: dict
) -> None:
    """The chunked Score-CAM against the materialise-everything formula it replaced."""
    inputs = squeeze_inputs(squeezenet, photos)
    row = squeezenet_net.input_bytes(tuple(inputs.shape[1:])) + 5 * SMALL * SMALL * 4
    state = prepare(squeezenet_net, inputs, top_k=2, budget=MemoryBudget(3 * FORWARD_GRANULE * row))
    weights, scores = make_method("scorecam").channel_weights(state)  # type: ignore[attr-defined]
    up = F.interpolate(state.activations, size=(SMALL, SMALL), mode="bilinear")
    masks = minmax(up, eps=SCORECAM_MASK_EPS)
    expected = torch.stack(
        [
            squeezenet_net.logits_in_chunks(image[None] * m[:, None], FORWARD_GRANULE)[:, t].T
            for image, m, t in zip(inputs, masks, state.classes, strict=True)
        ]
    )
    assert state.budget.chunks["scorecam"] < masks.shape[1]  # it did chunk
    assert torch.equal(scores, expected)
    assert torch.equal(weights, expected.softmax(-1))


@pytest.mark.parametrize("method", ["fdcam", "ablationcam"])
def test_factorised_head_chunks_masks_exactly(
    method: str, vgg16_net: SplitNetwork, photos: dict, vgg16_random: LoadedModel
) -> None:
    inputs = vgg16_random.preprocess(photos["cat"])[None]
    scorer = FactorisedMaskedHead(vgg16_net.head)
    whole = run(method, vgg16_net, inputs, MemoryBudget(1 << 40), scorer=scorer)
    module = scorer.module_for((512, 7, 7), False)
    assert module is not None and module.chunks_masks
    budget = MemoryBudget(MASK_GRANULE * module.mask_bytes(1))
    chunked = run(method, vgg16_net, inputs, budget, scorer=scorer)
    assert budget.chunks["masked-head"] == MASK_GRANULE
    assert torch.equal(chunked.maps, whole.maps)
    assert torch.equal(chunked.scores, whole.scores)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("budget", "row", "total", "granule", "expected"),
    [
        (1000, 10, 1000, 32, 96),  # 100 fit: whole granules
        (1000, 10, 50, 32, 50),  # never more than there is
        (1000, 100, 1000, 32, 10),  # under a granule: as many rows as fit
        (5, 100, 1000, 32, 1),  # at least one
        (1000, 0, 7, 32, 7),
    ],
)
def test_rows(budget: int, row: int, total: int, granule: int, expected: int) -> None:
    memory = MemoryBudget(budget)
    assert memory.rows("work", row, total, granule) == expected
    assert memory.record() == {"max_memory_bytes": budget, "chunks": {"work": expected}}


@pytest.mark.parametrize("bad", [0, -1])
def test_budget_must_be_positive(bad: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        MemoryBudget(bad)


def test_default_budget_on_a_cpu(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 100 kB\nMemAvailable:    2048 kB\n")
    assert available_bytes(meminfo) == 2048 * 1024
    assert 0 < default_budget(torch.device("cpu")) <= CPU_CAP
