"""Every method equals the plain reference of METHODS.md sections 1-2 (tests/reference.py).

Real SqueezeNet on two photos with the top-2 classes (B=2, T=2), random-weight VGG16 on one.
Kernel results are computed once per method and batch, then checked against the reference one
(image, class) at a time, and against B=1 runs with explicit classes.
"""

from __future__ import annotations

import pytest
import reference
import torch
import torchvision
from fdpipe.export.loading import LoadedModel, from_module, load_model
from fdpipe.export.request import PreprocessOptions
from fdpipe.export.split import split_at
from fdpipe.kernels import (
    METHODS,
    CAMMethod,
    CAMResult,
    LayerState,
    SplitNetwork,
    make_method,
    prepare,
)
from fdpipe.kernels.base import ChannelWeightsCAM
from fdpipe.kernels.factorised_head import FactorisedMaskedHead
from fdpipe.kernels.fgcam import BASES
from reference import assert_matches

ALL = list(reference.METHODS)  # METHODS.md sections 1-2
# Score-CAM and Group-CAM re-run the whole network (512 and 32 times per image and class):
# they are checked on 96 px inputs (SqueezeNet gives 5 x 5 activations there); the arithmetic
# does not depend on the size.
FULL_FORWARD = {"scorecam", "groupcam"}
SMALL_SIZE = 96


def batch(
    model: LoadedModel, photos: dict, names: list[str], size: int | None = None
) -> torch.Tensor:
    images = torch.stack([model.preprocess(photos[n]) for n in names])
    if size is not None:
        images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear")
    return images


class Runs:
    """Kernel results per method on one state, computed on first use."""

    def __init__(self, state: LayerState) -> None:
        self.state = state
        self.results: dict[str, CAMResult] = {}

    def __getitem__(self, method: str) -> CAMResult:
        if method not in self.results:
            self.results[method] = make_method(method)(self.state)
        return self.results[method]


@pytest.fixture(scope="module")
def squeeze_runs(squeezenet: LoadedModel, squeezenet_net: SplitNetwork, photos: dict) -> Runs:
    inputs = batch(squeezenet, photos, ["cat", "coffee"])
    return Runs(prepare(squeezenet_net, inputs, top_k=2))


@pytest.fixture(scope="module")
def squeeze_small_runs(squeezenet: LoadedModel, squeezenet_net: SplitNetwork, photos: dict) -> Runs:
    inputs = batch(squeezenet, photos, ["cat", "coffee"], size=SMALL_SIZE)
    return Runs(prepare(squeezenet_net, inputs))


def squeeze_for(method: str, squeeze_runs: Runs, squeeze_small_runs: Runs) -> Runs:
    return squeeze_small_runs if method in FULL_FORWARD else squeeze_runs


# (image, class) pairs checked per method: every pair for the gradient-only methods; the
# perturbation methods cost seconds per pair, so one or two pairs (the small batch has T = 1).
REFERENCE_PAIRS = {
    "fdcam": [(1, 1)],
    "ablationcam": [(0, 1)],
    "groupcam": [(0, 0), (1, 0)],
    "scorecam": [(0, 0)],
}


@pytest.mark.parametrize("method", ALL)
def test_squeezenet_matches_reference(
    method: str, squeeze_runs: Runs, squeeze_small_runs: Runs
) -> None:
    runs = squeeze_for(method, squeeze_runs, squeeze_small_runs)
    state = runs.state
    result = runs[method]
    for b, t in REFERENCE_PAIRS.get(method, [(0, 0), (0, 1), (1, 0), (1, 1)]):
        p = reference.probe(state.network, state.inputs[b])
        ref = reference.METHODS[method](p, int(state.classes[b, t]))
        assert_matches(result, b, t, ref)


@pytest.mark.parametrize("method", ALL)
def test_batch_equals_one_by_one(method: str, squeeze_runs: Runs, squeeze_small_runs: Runs) -> None:
    runs = squeeze_for(method, squeeze_runs, squeeze_small_runs)
    state = runs.state
    batched = runs[method]
    # Image 1 alone, its classes named explicitly (the batch chose them by top-k).
    single_state = prepare(state.network, state.inputs[1:], classes=state.classes[1].tolist())
    single = make_method(method)(single_state)
    torch.testing.assert_close(single.maps[0], batched.maps[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(single.native[0], batched.native[1], atol=1e-5, rtol=1e-4)


def test_top_k_and_explicit_classes(squeeze_runs: Runs) -> None:
    state = squeeze_runs.state
    assert state.classes.shape == (2, 2)
    assert torch.equal(state.classes, state.logits.topk(2, dim=1).indices)
    one_row = prepare(state.network, state.inputs, classes=[281, 7])
    assert one_row.classes.tolist() == [[281, 7], [281, 7]]
    per_image = prepare(state.network, state.inputs, classes=[[281], [967]])
    assert per_image.classes.tolist() == [[281], [967]]
    maps = make_method("gradcam")(per_image).maps
    assert maps.shape == (2, 1, 224, 224)
    with pytest.raises(ValueError, match=r"valid class indices are 0\.\.999"):
        prepare(state.network, state.inputs, classes=[1000])
    with pytest.raises(ValueError, match="top_k must be between 1 and 1000"):
        prepare(state.network, state.inputs, top_k=0)


# Score-CAM is left out on VGG16: 512 full VGG16 forwards per image take minutes on one CPU
# thread; its arithmetic is checked on SqueezeNet above. Group-CAM's 33 full forwards run at
# 96 px (3 x 3 activations; the adaptive avgpool makes the head accept them).
VGG_SIZES = {"groupcam": 96}


@pytest.mark.parametrize("method", [m for m in ALL if m != "scorecam"])
def test_vgg16_matches_reference(
    method: str, vgg16_random: LoadedModel, vgg16_net: SplitNetwork, photos: dict
) -> None:
    inputs = batch(vgg16_random, photos, ["cat"], size=VGG_SIZES.get(method))
    state = prepare(vgg16_net, inputs)
    result = make_method(method)(state)
    p = reference.probe(vgg16_net, inputs[0])
    assert_matches(result, 0, 0, reference.METHODS[method](p, int(state.classes[0, 0])))


CHANNEL_WEIGHTS = {"fdcam", "gradcam", "gradcampp", "xgradcam", "ablationcam", "scorecam"}


def test_one_override_point_per_family() -> None:
    """Raw-map methods override raw_map only; channel-weights methods channel_weights only."""
    for name, cls in METHODS.items():
        assert issubclass(cls, CAMMethod)
        assert issubclass(cls, ChannelWeightsCAM) == (name in CHANNEL_WEIGHTS), name
        own = {"__call__", "raw_map", "channel_weights"} & set(vars(cls))
        assert own == ({"channel_weights"} if name in CHANNEL_WEIGHTS else {"raw_map"}), name
    assert all(issubclass(base, ChannelWeightsCAM) for base in BASES.values())


def test_families_are_abstract() -> None:
    class NoRawMap(CAMMethod):
        name = "no-raw-map"

    class NoWeights(ChannelWeightsCAM):
        name = "no-weights"

    for cls in (CAMMethod, ChannelWeightsCAM, NoRawMap, NoWeights):
        with pytest.raises(TypeError):
            cls()


# ---- own models (random weights, small inputs): every method against the same reference ----


def _gray_cnn() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(inplace=True), torch.nn.MaxPool2d(4),
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(inplace=True),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 3),
    )  # fmt: skip


def _own(name: str) -> LoadedModel:
    size = PreprocessOptions(size=(64, 64))
    torch.manual_seed(0)
    if name == "resnet18-10":
        return from_module(torchvision.models.resnet18(num_classes=10), preprocess=size)
    if name == "torchscript":  # cut by its children, the head explicit
        scripted = torch.jit.script(torchvision.models.resnet18(num_classes=10).eval())
        return from_module(scripted, layer="layer4", preprocess=size)
    if name == "timm:resnet10t":
        pytest.importorskip("timm")
        return load_model(name, pretrained=False, preprocess=size)
    if name == "gray-128":
        gray = PreprocessOptions(size=(128, 128), channels=1, normalisation="none")
        return from_module(_gray_cnn(), preprocess=gray)
    return load_model(name, pretrained=False, preprocess=size)  # the default layer


OWN_MODELS = ["resnet18-10", "densenet121", "efficientnet_b0", "timm:resnet10t", "torchscript",
              "gray-128"]  # fmt: skip
OWN_METHODS = [m for m in ALL if m not in FULL_FORWARD]


@pytest.fixture(scope="module")
def own_runs() -> dict[str, Runs]:
    return {}


def _own_runs(cache: dict[str, Runs], name: str) -> Runs:
    """In float64: random weights put some channel sums of DenseNet's norm5 (a BN, the ReLU is
    in the head) near zero, where XGrad-CAM's division turns float32 rounding into 2e-3; the
    float32 kernels are checked against the reference on SqueezeNet and VGG16 above."""
    if name not in cache:
        model = _own(name)
        model.module.double()
        network = split_at(model.module, model.layer)
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(2, *model.input_shape, generator=generator, dtype=torch.float64)
        scorer = FactorisedMaskedHead(network.head)  # exact fast path where it applies
        cache[name] = Runs(prepare(network, images, top_k=1, scorer=scorer))
    return cache[name]


@pytest.mark.parametrize("method", OWN_METHODS)
@pytest.mark.parametrize("name", OWN_MODELS)
def test_own_models_match_reference(name: str, method: str, own_runs: dict[str, Runs]) -> None:
    runs = _own_runs(own_runs, name)
    state = runs.state
    for b in (0, 1) if method not in REFERENCE_PAIRS else (1,):
        p = reference.probe(state.network, state.inputs[b])
        assert_matches(runs[method], b, 0, reference.METHODS[method](p, int(state.classes[b, 0])))


@pytest.mark.parametrize("method", sorted(FULL_FORWARD))
def test_full_forward_methods_on_a_grayscale_model(method: str, own_runs: dict[str, Runs]) -> None:
    runs = _own_runs(own_runs, "gray-128")
    p = reference.probe(runs.state.network, runs.state.inputs[0])
    assert_matches(runs[method], 0, 0, reference.METHODS[method](p, int(runs.state.classes[0, 0])))


@pytest.mark.parametrize("name", OWN_MODELS)
def test_own_models_use_the_exact_fast_head_where_it_holds(
    name: str, own_runs: dict[str, Runs]
) -> None:
    """METHODS.md section 5: DenseNet's functional ReLU and pooling included; a TorchScript
    head (opaque modules) is masked explicitly."""
    state = _own_runs(own_runs, name).state
    module = state.scorer.module_for(tuple(state.activations.shape[1:]), False)  # type: ignore[attr-defined]
    assert (module is not None) == (name != "torchscript")
