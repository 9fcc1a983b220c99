"""The factorised masked head equals plain masked evaluation of the head (METHODS.md section 5)."""

from __future__ import annotations

import pytest
import torch
from fdpipe.export.loading import load_model
from fdpipe.export.split import split_at
from fdpipe.kernels import ExplicitMaskedHead, SplitNetwork
from fdpipe.kernels.factorised_head import FactorisedMaskedHead, plan_head
from fdpipe.kernels.fdcam import similarity_groups
from torch import nn


@pytest.fixture(scope="module")
def resnet18_net() -> SplitNetwork:
    model = load_model("resnet18", layer="layer4", pretrained=False)
    return split_at(model.module, model.layer)


@pytest.fixture(scope="module")
def resnet18_inner_net() -> SplitNetwork:
    """Cut inside the last block: the head reads the residual branch as an extra input."""
    model = load_model("resnet18", layer="layer4.1.conv2", pretrained=False)
    return split_at(model.module, model.layer)


def _inputs(request: pytest.FixtureRequest, name: str, photos: dict) -> tuple[SplitNetwork, ...]:
    network = request.getfixturevalue(name)
    model = request.getfixturevalue("squeezenet" if name == "squeezenet_net" else "vgg16_random")
    batch = torch.stack([model.preprocess(photos[p]) for p in ("cat", "rocket")])
    return network, batch


def _masks(activations: torch.Tensor, kind: str, count: int = 24) -> torch.Tensor:
    """(B, 2 * count, K): random binary masks, or FD-CAM's keep-only and switch-off masks."""
    generator = torch.Generator().manual_seed(0)
    batch, channels = activations.shape[:2]
    if kind == "random":
        shape = (batch, 2 * count, channels)
        return (torch.rand(shape, generator=generator) < 0.5).float()
    keep = similarity_groups(activations)[:, :count].float()
    return torch.cat([keep, 1 - keep], dim=1)


def _assert_equal_scores(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("probabilities", [False, True], ids=["logits", "probabilities"])
@pytest.mark.parametrize("kind", ["random", "fdcam"])
@pytest.mark.parametrize(
    "network_name", ["vgg16_net", "squeezenet_net", "resnet18_net", "resnet18_inner_net"]
)
def test_factorised_equals_explicit(request, photos, network_name, kind, probabilities):
    torch.manual_seed(0)
    if network_name.startswith("resnet18"):
        network = request.getfixturevalue(network_name)
        images = torch.randn(2, 3, 224, 224)
    else:
        network, images = _inputs(request, network_name, photos)
    with torch.no_grad():
        activations, extras = network.features(images)
    masks = _masks(activations, kind)
    classes = torch.tensor([[3, 281], [0, 999]])
    factorised = FactorisedMaskedHead(network.head)
    expected = ExplicitMaskedHead(network.head)(
        activations, masks, classes, extras=extras, probabilities=probabilities
    )
    actual = factorised(activations, masks, classes, extras=extras, probabilities=probabilities)
    assert actual.shape == (2, 2, masks.shape[1])
    _assert_equal_scores(actual, expected)


@pytest.mark.parametrize(
    ("network_name", "shape", "probabilities", "kind"),
    [
        ("vgg16_net", (512, 7, 7), False, "linear"),
        ("vgg16_net", (512, 7, 7), True, "linear"),
        ("resnet18_net", (512, 7, 7), False, "linear"),
        ("squeezenet_net", (512, 13, 13), False, "pointwise-conv"),
        ("squeezenet_net", (512, 13, 13), True, None),
        ("resnet18_inner_net", (512, 7, 7), False, None),
    ],
)
def test_plan_chooses_factorisation_only_where_it_holds(
    request, network_name, shape, probabilities, kind
):
    plan, reason = plan_head(
        request.getfixturevalue(network_name).head, shape, probabilities=probabilities
    )
    assert (plan is not None) == (kind is not None)
    if kind is not None:
        assert reason == kind


def test_negative_masks_fall_back_to_explicit(vgg16_net):
    activations = torch.rand(1, 512, 7, 7)
    masks = torch.randn(1, 6, 512)  # ReLU/max-pool only commute with factors >= 0
    classes = torch.tensor([[7]])
    expected = ExplicitMaskedHead(vgg16_net.head)(activations, masks, classes)
    _assert_equal_scores(
        FactorisedMaskedHead(vgg16_net.head)(activations, masks, classes), expected
    )


@pytest.mark.parametrize(
    ("layers", "kind"),
    [
        (
            [nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10)],
            "linear",
        ),
        ([nn.BatchNorm2d(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)], None),
        ([nn.Conv2d(8, 10, 1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten()], "pointwise-conv"),
        ([nn.Conv2d(8, 10, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()], None),
    ],
    ids=["inplace-relu-linear", "batchnorm", "pointwise-conv", "3x3-conv"],
)
def test_small_heads(layers: list[nn.Module], kind: str | None) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), *layers).eval()
    network = split_at(model, "0")
    activations = torch.randn(2, 8, 6, 6)  # signed: an in-place ReLU would change them
    before = activations.clone()
    masks = (torch.rand(2, 9, 8) < 0.5).float()
    classes = torch.tensor([[0, 9], [3, 3]])
    plan, reason = plan_head(network.head, (8, 6, 6))
    assert (reason if plan else None) == kind
    for probabilities in (False, True):
        expected = ExplicitMaskedHead(network.head)(
            activations, masks, classes, probabilities=probabilities
        )
        scorer = FactorisedMaskedHead(network.head)
        actual = scorer(activations, masks, classes, probabilities=probabilities)
        _assert_equal_scores(actual, expected)
    assert torch.equal(activations, before)
