"""FD-CAM's parts (METHODS.md section 1): similarity groups, degenerate inputs, variants, dedup."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import reference
import torch
from fdpipe.export.loading import LoadedModel
from fdpipe.kernels import FDCAM, FDCAMOptions, SplitNetwork, make_method, prepare
from fdpipe.kernels.fdcam import (
    channel_cosine,
    combine,
    quantile_linear,
    score_unique_masks,
    similarity_groups,
    unique_rows,
)
from fdpipe.kernels.masked_head import ExplicitMaskedHead
from fdpipe.kernels.state import LayerState
from syncs import CountSyncs

# Variants run on 112 px inputs: SqueezeNet's head then sees 6 x 6 activations, cheap to re-run
# 1,024 times per variant; the formulas do not depend on the size.
VARIANT_SIZE = 112
TOP_INDEX = 485  # 0.95 * (512 - 1) = 485.45: the threshold lies between sorted[485] and [486]


def group_sizes_are_26(activations: torch.Tensor) -> None:
    """Each non-zero channel's group has 26 members: the channels above sorted row[485].

    Only a tie at the threshold (sorted[485] == sorted[486]) leaves fewer, as '>' is strict.
    """
    assert activations.shape[1] == 512
    groups = similarity_groups(activations)
    ordered = channel_cosine(activations).sort(dim=-1).values
    nonzero = activations.flatten(2).norm(dim=-1) > 0
    sizes = groups.sum(-1)
    untied = ordered[..., TOP_INDEX] < ordered[..., TOP_INDEX + 1]
    assert (sizes[nonzero & untied] == 26).all()
    assert (sizes[nonzero & ~untied] < 26).all()
    assert (nonzero & untied).sum() > 0.95 * nonzero.sum()  # ties are the rare case
    # k belongs to its own group (cos = 1 is its row's largest value) ...
    assert groups.diagonal(dim1=1, dim2=2)[nonzero].all()
    # ... and an all-zero channel has an empty group.
    assert (sizes[~nonzero] == 0).all()


def test_groups_of_random_activations() -> None:
    activations = torch.rand(3, 512, 7, 7, generator=torch.Generator().manual_seed(0))
    activations[1, 7] = 0
    group_sizes_are_26(activations)
    groups = similarity_groups(activations)
    assert not groups[1, 7].any()
    assert not groups[1, :, 7].any()  # nor is it in anyone else's


@pytest.mark.parametrize("model", ["squeezenet", "vgg16"])
def test_groups_of_real_activations(
    model: str,
    squeezenet: LoadedModel,
    squeezenet_net: SplitNetwork,
    vgg16_random: LoadedModel,
    vgg16_net: SplitNetwork,
    photos: dict,
) -> None:
    loaded, network = (
        (squeezenet, squeezenet_net) if model == "squeezenet" else (vgg16_random, vgg16_net)
    )
    images = torch.stack([loaded.preprocess(photos[n]) for n in ("cat", "coffee")])
    activations, _ = network.features(images)
    assert (activations.flatten(2).norm(dim=-1) == 0).any()  # real ReLU maps have dead channels
    group_sizes_are_26(activations)


def test_groups_match_reference(squeezenet: LoadedModel, squeezenet_net: SplitNetwork, photos):
    image = squeezenet.preprocess(photos["cat"])
    acts = reference.probe(squeezenet_net, image).acts
    expected = reference.similarity_groups(acts, 0.95)
    groups = similarity_groups(torch.from_numpy(acts)[None])[0]
    assert [torch.nonzero(row).flatten().tolist() for row in groups] == expected


@pytest.mark.parametrize("q", [0.0, 0.3, 0.5, 0.95, 0.999, 1.0])
@pytest.mark.parametrize("size", [1, 2, 7, 512])
def test_quantile_linear_equals_torch_quantile(q: float, size: int) -> None:
    values = torch.randn(4, size, generator=torch.Generator().manual_seed(size))
    values[0] = values[0].round()  # ties
    expected = torch.quantile(values, q, dim=-1, keepdim=True)
    torch.testing.assert_close(quantile_linear(values, q), expected)


def zero_state(network: SplitNetwork, image: torch.Tensor) -> LayerState:
    """A state whose activations are all zero: every channel dead, every mask the same."""
    activations = torch.zeros_like(network.features(image[None])[0])
    logits = network.head(activations)
    return LayerState(
        network=network,
        inputs=image[None],
        activations=activations,
        extras=(),
        logits=logits,
        classes=logits.topk(1, dim=1).indices,
        scorer=ExplicitMaskedHead(network.head),
    )


@pytest.mark.parametrize("probabilities", [False, True])
def test_all_zero_activations_give_zero_map(
    squeezenet: LoadedModel, squeezenet_net: SplitNetwork, photos: dict, probabilities: bool
) -> None:
    state = zero_state(squeezenet_net, squeezenet.preprocess(photos["cat"]))
    result = FDCAM(probabilities=probabilities)(state)
    for tensor in (result.native, result.maps, result.weights, result.scores):
        assert torch.isfinite(tensor).all()
    # Every group is empty: switch-off changes nothing, switch-on keeps the (zero) activations.
    clean = state.target_probabilities if probabilities else state.target_logits
    torch.testing.assert_close(result.scores, clean[..., None].expand_as(result.scores))
    assert (result.maps == 0).all()
    assert not similarity_groups(state.activations).any()


@pytest.mark.parametrize("combination", ["product", "exp", "exp_shift"])
def test_constant_weights_and_scores_give_no_nan(combination: str) -> None:
    cfg = FDCAMOptions(combination=combination)
    constant = torch.full((2, 1, 512), 3.0)
    weights = combine(constant, constant, cfg)
    expected = -cfg.shift if combination == "exp_shift" else 0.0
    assert (weights == expected).all()
    varying = torch.linspace(-1, 2, 512).expand(2, 1, -1)
    assert torch.isfinite(combine(varying, constant, cfg)).all()
    assert torch.isfinite(combine(constant, varying, cfg)).all()


VARIANTS = [
    {},
    {"grouping": False},
    {"scoring": "off"},
    {"grouping": False, "scoring": "off"},
    {"combination": "product"},
    {"combination": "exp"},
    {"threshold": 0.9, "shift": 0.3},
    {"probabilities": True},
]


@pytest.fixture(scope="module")
def small_state(squeezenet: LoadedModel, squeezenet_net: SplitNetwork, photos) -> LayerState:
    image = squeezenet.preprocess(photos["cat"])[None]
    small = torch.nn.functional.interpolate(image, size=(VARIANT_SIZE, VARIANT_SIZE))
    return prepare(squeezenet_net, small)


@pytest.mark.parametrize("options", VARIANTS, ids=lambda o: ",".join(map(str, o.items())) or "-")
def test_variant_matches_reference(options: dict, small_state: LayerState) -> None:
    method = make_method("fdcam", **options)
    assert method.options() == {**asdict(FDCAMOptions()), **options}
    result = method(small_state)
    p = reference.probe(small_state.network, small_state.inputs[0])
    ref = reference.fdcam(p, int(small_state.classes[0, 0]), **options)
    np.testing.assert_allclose(result.native[0, 0].double(), ref.native, atol=2e-4)
    np.testing.assert_allclose(result.maps[0, 0].double(), ref.maps, atol=2e-4)
    scale = np.abs(ref.scores).max()
    np.testing.assert_allclose(result.scores[0, 0].double(), ref.scores, atol=1e-4 * scale)
    np.testing.assert_allclose(result.weights[0, 0].double(), ref.weights, atol=1e-4)


def test_variants_differ(small_state: LayerState) -> None:
    """The options reach the computation: each variant changes the weights."""
    weights = [make_method("fdcam", **o)(small_state).weights for o in VARIANTS]
    for i, first in enumerate(weights):
        for second in weights[i + 1 :]:
            assert not torch.allclose(first, second)


def test_ungrouped_switch_off_scores_are_ablation_drops(small_state: LayerState) -> None:
    fdcam = make_method("fdcam", grouping=False, scoring="off")(small_state)
    ablation = make_method("ablationcam")(small_state)
    torch.testing.assert_close(fdcam.scores, ablation.scores)


def test_unknown_options_are_refused() -> None:
    with pytest.raises(TypeError):
        make_method("fdcam", thresold=0.9)
    with pytest.raises(ValueError, match="product, exp or exp_shift"):
        combine(torch.zeros(1, 1, 4), torch.zeros(1, 1, 4), FDCAMOptions(combination="sum"))


def test_dedup_of_identical_masks_keeps_scores(small_state: LayerState) -> None:
    two = prepare(small_state.network, small_state.inputs.repeat(2, 1, 1, 1), top_k=3)
    channels = two.activations.shape[1]
    generator = torch.Generator().manual_seed(0)
    distinct = (torch.rand(2, 5, channels, generator=generator) > 0.5).float()
    # The images repeat different masks, so they have different numbers of unique ones.
    picks = torch.tensor([[0, 1, 0, 2, 1, 1, 0, 1], [0, 0, 1, 2, 3, 4, 0, 4]])
    masks = torch.stack([distinct[b, picks[b]] for b in range(2)])
    explicit = ExplicitMaskedHead(two.network.head)
    for probabilities in (False, True):
        expected = explicit(two.activations, masks, two.classes, probabilities=probabilities)
        got = score_unique_masks(two, masks, probabilities)
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(
    "weights", [None, torch.zeros(6, dtype=torch.float64)], ids=["keys", "all-collide"]
)
def test_unique_rows_are_torch_uniques_rows(weights: torch.Tensor | None) -> None:
    """Per image the distinct rows and the inverse of ``torch.unique(dim=0)``, zero-padded to
    the widest image, also when keys collide."""
    generator = torch.Generator().manual_seed(1)
    rows = (torch.rand(2, 40, 6, generator=generator) > 0.5).float()
    rows = torch.cat([rows, rows[:, :10].flip(1)], dim=1)  # repeats in another order
    rows[1, 20:] = rows[1, 0]  # the second image has fewer distinct rows
    unique, inverse = unique_rows(rows, weights)
    counts = []
    for b in range(2):
        expected, _ = torch.unique(rows[b], dim=0, return_inverse=True)
        counts.append(len(expected))
        assert torch.equal(unique[b].gather(0, inverse[b, :, None].expand(-1, 6)), rows[b])
        assert sorted(map(tuple, unique[b, : len(expected)].tolist())) == sorted(
            map(tuple, expected.tolist())
        )
        assert not unique[b, len(expected) :].any()  # padding
    assert unique.shape[1] == max(counts) and counts[1] < counts[0]


def test_fdcam_waits_for_the_device_once_per_batch_not_per_image(small_state: LayerState) -> None:
    counts = []
    for batch in (1, 4):
        state = prepare(small_state.network, small_state.inputs.repeat(batch, 1, 1, 1), top_k=2)
        state.gradients  # noqa: B018 - the shared gradients are not FD-CAM's own work
        with CountSyncs() as syncs:
            make_method("fdcam")(state)
        counts.append(syncs.count)
    assert counts[0] == counts[1] <= 2  # the unique rows' width; the scorer's mask sign check
