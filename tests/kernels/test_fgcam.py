"""FG-CAM (METHODS.md section 3): each rule and the whole chain vs reference_fgcam.py, photos."""

from __future__ import annotations

import math
from collections.abc import Callable

import fdpipe
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fdpipe.export.loading import LoadedModel, load_model
from fdpipe.export.runners import ChannelsLastBackbone, RunnerBackbone
from fdpipe.export.split import split_at
from fdpipe.kernels import FGCAM, LayerState, SplitNetwork, make_method, prepare
from fdpipe.kernels.fgcam import denoise
from fdpipe.kernels.precision import AutocastBackbone, emulate
from fdpipe.kernels.propagation import (
    MISMATCH_TOLERANCE,
    UnsupportedArchitecture,
    bounded_input_rule,
    conv_rule,
    fire_forward,
    fire_rule,
    mismatch_tolerance,
    pool_rule,
)
from PIL import Image
from reference_fgcam import (
    conv_relevance,
    fgcam_reference,
    fire_relevance,
    pool_relevance,
)
from torch import Tensor, nn
from torchvision.models.squeezenet import Fire

TARGETS = 2


def random_relevance(generator: torch.Generator, batch: int, shape: tuple[int, ...]) -> Tensor:
    """Signed relevance, as negative channel weights give."""
    return torch.randn(batch, TARGETS, *shape, generator=generator)


def per_map(
    reference: Callable[..., Tensor], relevance: Tensor, x: Tensor, *args: object
) -> Tensor:
    """The reference, one (image, target) map at a time, stacked to (B, T, ...)."""
    return torch.stack(
        [
            torch.stack([reference(r, image, *args) for r in per_image])
            for per_image, image in zip(relevance, x, strict=True)
        ]
    )


@pytest.mark.parametrize(
    ("kernel", "stride", "padding"), [(3, 1, 1), (3, 2, 0), (1, 1, 0), (2, 2, 1)]
)
@pytest.mark.parametrize("first", [False, True], ids=["hidden", "image"])
def test_conv_rules_match_reference(kernel: int, stride: int, padding: int, first: bool) -> None:
    gen = torch.Generator().manual_seed(kernel * 10 + stride)
    conv = nn.Conv2d(3, 5, kernel, stride, padding).requires_grad_(False)
    x = torch.randn(2, 3, 9, 9, generator=gen)
    if not first:
        x = x.clamp_min(0)  # hidden layers see ReLU outputs
    out = conv(x)
    relevance = random_relevance(gen, 2, out.shape[1:])

    def reference(r: Tensor, image: Tensor) -> Tensor:
        bounds = (float(image.min()), float(image.max())) if first else None
        return conv_relevance(r, image, conv, bounds)

    got = bounded_input_rule(relevance, x, conv) if first else conv_rule(relevance, x, conv)
    want = per_map(reference, relevance, x)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


POOLS = {
    "max2": nn.MaxPool2d(2, 2),
    "max3-ceil": nn.MaxPool2d(3, 2, ceil_mode=True),
    "avg2": nn.AvgPool2d(2, 2),
    "avg3-overlap": nn.AvgPool2d(3, 1),
}


@pytest.mark.parametrize("name", POOLS)
def test_pool_rule_matches_reference(name: str) -> None:
    pool = POOLS[name]
    gen = torch.Generator().manual_seed(len(name))
    x = torch.randn(2, 4, 9, 9, generator=gen)  # signed: the rule applies its own ReLU
    relevance = random_relevance(gen, 2, pool(x).shape[1:])
    want = per_map(pool_relevance, relevance, x, pool)
    torch.testing.assert_close(pool_rule(relevance, x, pool).double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["max2", "max3-ceil"])
def test_max_pool_rule_conserves_relevance(name: str) -> None:
    pool = POOLS[name]
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(3, 6, 11, 11, generator=gen)
    pooled = pool(x.clamp_min(0))
    relevance = random_relevance(gen, 3, pooled.shape[1:])
    received = relevance.where(pooled[:, None] > 0, 0.0).sum(dim=(2, 3, 4))
    assert (pooled == 0).any()  # the Y == 0 case is exercised
    torch.testing.assert_close(pool_rule(relevance, x, pool).sum(dim=(2, 3, 4)), received)


def test_fire_rule_matches_reference() -> None:
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    fire = Fire(6, 3, 4, 5).eval().requires_grad_(False)
    x = torch.randn(2, 6, 7, 7, generator=gen).clamp_min(0)
    out, saved = fire_forward(fire, x)
    torch.testing.assert_close(out, fire(x))
    relevance = random_relevance(gen, 2, out.shape[1:])
    want = per_map(fire_relevance, relevance, x, fire)
    torch.testing.assert_close(
        fire_rule(relevance, saved, fire).double(), want, atol=1e-5, rtol=1e-4
    )


def test_denoise_keeps_rank_d_of_centred_rows() -> None:
    gen = torch.Generator().manual_seed(5)
    components = torch.randn(2, TARGETS, 30, 5, 6, generator=gen, dtype=torch.float64)
    got = denoise(components)
    rank = math.floor(0.1 * min(30, 5 * 6))
    for b in range(2):
        for t in range(TARGETS):
            rows = components[b, t].reshape(30, -1).numpy()
            centred = rows - rows.mean(axis=1, keepdims=True)
            u, s, vh = np.linalg.svd(centred, full_matrices=False)
            want = u[:, :rank] @ np.diag(s[:rank]) @ vh[:rank]
            np.testing.assert_allclose(got[b, t].reshape(30, -1).numpy(), want, atol=1e-10)


def randomised_batch_norm(model: LoadedModel) -> LoadedModel:
    """Random running statistics and affine terms, so batch norm changes the forward pass."""
    gen = torch.Generator().manual_seed(11)
    for module in model.module.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.randn(size, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(size, generator=gen) + 0.5)
            module.weight.copy_(torch.rand(size, generator=gen) + 0.5)
            module.bias.copy_(torch.randn(size, generator=gen) * 0.1)
    return model


CHAINS = {
    # model, target layer, resolution, index of the layer at whose input the map is,
    # image size and count (VGG16's reference is the slowest: one small image)
    "vgg16-input": ("vgg16", "features.30", "input", 0, 32, 1),
    "vgg11_bn-input": ("vgg11_bn", "features.28", "input", 0, 32, 1),
    "vgg11_bn-features.9": ("vgg11_bn", "features.28", "features.9", 10, 32, 1),
    "squeezenet-input": ("squeezenet1_1", "features.12", "input", 0, 64, 2),
    "squeezenet-features.4": ("squeezenet1_1", "features.12", "features.4", 5, 64, 2),
}


@pytest.mark.parametrize("chain", CHAINS)
def test_whole_chain_matches_reference(chain: str) -> None:
    name, layer, resolution, stop, size, count = CHAINS[chain]
    model = randomised_batch_norm(load_model(name, layer=layer, pretrained=False, seed=1))
    network = split_at(model.module, layer)
    images = torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(2))
    state = prepare(network, images, top_k=TARGETS)
    result = FGCAM(base="gradcam", resolution=resolution)(state)
    features = model.module.features
    layers = [features[i] for i in range(int(layer.rpartition(".")[2]) + 1)]
    weights = make_method("gradcam").channel_weights(state)[0]
    for b, image in enumerate(images):
        for t in range(TARGETS):
            _, want = fgcam_reference(layers, image, weights[b, t], stop)
            torch.testing.assert_close(result.native[b, t].double(), want, atol=2e-4, rtol=0)


@pytest.fixture(scope="module")
def small_state(squeezenet_net: SplitNetwork, squeezenet: LoadedModel, photos) -> LayerState:
    """Cat and coffee at 64 x 64 (3 x 3 at the target): the perturbation bases stay cheap."""
    full = torch.stack([squeezenet.preprocess(photos[n]) for n in ("cat", "coffee")])
    small = F.interpolate(full, size=(64, 64), mode="bilinear", antialias=True)
    return prepare(squeezenet_net, small, top_k=TARGETS)


@pytest.mark.parametrize("base", ["gradcam", "scorecam", "fdcam"])
def test_stopped_at_target_equals_base(small_state: LayerState, base: str) -> None:
    fine = FGCAM(base=base, resolution=small_state.network.layer)(small_state)
    coarse = make_method(base)(small_state)
    torch.testing.assert_close(fine.native, coarse.native, atol=1e-6, rtol=0)
    torch.testing.assert_close(fine.maps, coarse.maps, atol=1e-6, rtol=0)
    torch.testing.assert_close(fine.weights, coarse.weights)


def test_denoising_refuses_to_erase_a_tiny_layer(small_state: LayerState) -> None:
    with pytest.raises(ValueError, match="rank"):  # 3 x 3 at the target: d = floor(0.9) = 0
        FGCAM(denoise=True)(small_state)


# Generous object boxes (x0, y0, x1, y1) in the 224 x 224 squashed frame, drawn by hand.
OBJECT_BOXES = {"cat": (0, 0, 175, 224), "coffee": (50, 0, 165, 135)}


@pytest.mark.parametrize(
    ("base", "denoise"), [("gradcam", False), ("gradcam", True), ("fdcam", False)]
)
def test_input_resolution_maps_point_at_the_object(
    squeezenet: LoadedModel, photos: dict[str, Image.Image], base: str, denoise: bool
) -> None:
    names = list(OBJECT_BOXES)
    result = fdpipe.explain(
        squeezenet,
        [photos[n] for n in names],
        "fgcam",
        base=base,
        resolution="input",
        denoise=denoise,
    )
    assert [squeezenet.class_names[c] for c in result.classes[:, 0]] == ["Egyptian cat", "espresso"]
    assert result.native.shape == (2, 1, 224, 224)
    assert torch.equal(result.maps, result.native)
    for name, saliency in zip(names, result.maps[:, 0], strict=True):
        x0, y0, x1, y1 = OBJECT_BOXES[name]
        flat = saliency.flatten()
        peak = int(flat.argmax())
        top = flat.topk(flat.numel() // 100).indices
        centre = (float((top % 224).float().mean()), float((top // 224).float().mean()))
        for x, y in [(peak % 224, peak // 224), centre]:
            assert x0 <= x <= x1 and y0 <= y <= y1, (name, x, y)


def test_unsupported_architecture_names_the_supported_ones() -> None:
    model = load_model("resnet18", layer="layer4", pretrained=False)
    network = split_at(model.module, model.layer)
    state = prepare(network, torch.zeros(1, 3, 32, 32))
    with pytest.raises(UnsupportedArchitecture, match=r"VGG11-19.*SqueezeNet"):
        FGCAM()(state)


class ScaledInput(nn.Module):
    """A conv stack with an extra step before it, which the walk would not see."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.LazyLinear(5))

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.features(images * 3.0))


def test_backbone_that_the_walk_cannot_reproduce_is_refused() -> None:
    model = ScaledInput()
    images = torch.randn(1, 3, 10, 10, generator=torch.Generator().manual_seed(4))
    model(images)  # materialise the lazy layer
    state = prepare(split_at(model.eval(), "features.2"), images)
    with pytest.raises(UnsupportedArchitecture, match="does not reproduce"):
        FGCAM()(state)


def test_wrapped_and_engine_backbones(small_state: LayerState) -> None:
    """A channels-last copy is walked like the plain backbone; an engine is refused clearly."""
    plain = small_state.network
    channels_last = SplitNetwork(ChannelsLastBackbone(plain.backbone), plain.head, plain.layer)
    want = FGCAM()(small_state).native
    got = FGCAM()(prepare(channels_last, small_state.inputs, top_k=TARGETS)).native
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    engine = RunnerBackbone(lambda images: [plain.backbone(images)])
    state = prepare(SplitNetwork(engine, plain.head, plain.layer), small_state.inputs)
    with pytest.raises(UnsupportedArchitecture, match="use the torch runtime"):
        FGCAM()(state)


def test_resolution_must_lie_below_the_target(small_state: LayerState) -> None:
    with pytest.raises(ValueError, match=r"'input' or one of features\.0 \.\. features\.12"):
        FGCAM(resolution="classifier.1")(small_state)


def test_unknown_base_is_refused() -> None:
    with pytest.raises(ValueError, match="gradcam, scorecam, fdcam"):
        FGCAM(base="layercam")


def test_options_record_the_base() -> None:
    options = FGCAM(base="fdcam", resolution="features.5", shift=0.3).options()
    assert options["base"] == "fdcam" and options["resolution"] == "features.5"
    assert options["base_options"]["shift"] == 0.3  # type: ignore[index]


def test_a_bf16_backbone_is_walked_within_bf16s_tolerance(squeezenet: LoadedModel, photos) -> None:
    """bf16 alone moves SqueezeNet's activations 1.6e-2 from the fp32 walk (METHODS.md section
    3): a bf16 backbone is checked against 5 bf16 epsilons, an fp32 one against 1e-2."""
    network = split_at(squeezenet.module, squeezenet.layer)
    assert mismatch_tolerance(network.backbone) == MISMATCH_TOLERANCE
    assert mismatch_tolerance(AutocastBackbone(network.backbone, torch.bfloat16)) == 5 * 2**-7
    assert mismatch_tolerance(AutocastBackbone(network.backbone, torch.float16)) == 1e-2
    with emulate("bf16"):
        low = fdpipe.Explainer(squeezenet, "fgcam", precision="bf16")(photos["cat"])["fgcam"]
    fp32 = fdpipe.Explainer(squeezenet, "fgcam")(photos["cat"])["fgcam"]
    assert np.corrcoef(low.maps.cpu().flatten(), fp32.maps.cpu().flatten())[0, 1] > 0.999
