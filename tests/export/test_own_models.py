"""Your own model: every source (torchvision sized from its weights, a fetch on the loopback
interface, timm, factories, TorchScript, trusted pickles), weights files that cannot be used,
class names, preprocessing as data, architectures and refused layers, export parity."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import fdpipe
import fdpipe.export.weights
import pytest
import torch
import torchvision
from fdpipe.backends import REFERENCE_RUNTIME
from fdpipe.export.class_names import class_indices, default_class_names, read_class_names
from fdpipe.export.loading import LoadedModel, load_model
from fdpipe.export.onnx import PARITY_TOLERANCE, export_model, load_manifest
from fdpipe.export.preprocessing import Normalisation, Preprocess
from fdpipe.export.request import ModelError, PreprocessOptions
from fdpipe.export.split import split_at
from torch import nn

FACTORY = """
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, channels: int = 3, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(16, classes)

    def forward(self, x):
        pooled = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(pooled, 1))


def tiny():
    return Tiny()


def gray():
    return Tiny(channels=1, classes=3)


def not_a_model():
    return 42
"""
SMALL = PreprocessOptions(size=(64, 64))


@pytest.fixture(scope="module")
def factory_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("factory") / "my_models.py"
    path.write_text(FACTORY)
    return path


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, torch.nn.Module]:
    """A 10-class ResNet-18 state dict (random weights) and its class names file."""
    directory = tmp_path_factory.mktemp("finetuned")
    torch.manual_seed(0)
    source = torchvision.models.resnet18(num_classes=10).eval()
    torch.save(source.state_dict(), directory / "ft10.pt")
    names = directory / "classes.txt"
    names.write_text("".join(f"part_{i}\n" for i in range(10)))
    return directory / "ft10.pt", names, source


def test_finetuned_torchvision_model_is_sized_from_its_weights(finetuned) -> None:
    weights, names, source = finetuned
    model = load_model("resnet18", weights=weights, class_names=names, preprocess=SMALL)
    assert model.num_classes == 10 and model.class_names[3] == "part_3"
    assert model.layer == "layer4" and model.source == "torchvision:resnet18"
    image = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(model.module(image), source(image))
    result = fdpipe.explain(model, image, "gradcam", classes=["part_7", 2])
    assert result.classes.tolist() == [[7, 2]]


def test_class_names_files(tmp_path: Path) -> None:
    listed = tmp_path / "names.json"
    listed.write_text(json.dumps(["cat", "dog"]))
    assert read_class_names(listed, 2) == ["cat", "dog"]
    mapped = tmp_path / "map.json"
    mapped.write_text(json.dumps({"1": "dog", "0": "cat"}))
    assert read_class_names(mapped) == ["cat", "dog"]
    with pytest.raises(ModelError, match="has 2 names; the model has 3 classes"):
        read_class_names(listed, 3)
    mapped.write_text(json.dumps({"0": "cat", "2": "dog"}))
    with pytest.raises(ModelError, match=r"indices must be 0\.\.1"):
        read_class_names(mapped)
    imagenet = default_class_names(1000)
    assert class_indices(["tabby", "281", "TIGER CAT"], imagenet) == [281, 281, 282]
    with pytest.raises(ModelError, match="unknown class 'zebrra'"):
        class_indices(["zebrra"], ["zebra"])


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep the test output clean
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory served over HTTP on the loopback interface."""
    directory = tmp_path / "served"
    directory.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield directory, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_published_weights_are_fetched_into_the_hub_cache(
    served: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory, url = served
    torch.manual_seed(1)
    source = torchvision.models.squeezenet1_0()
    staged = directory / "staged.pth"
    torch.save(source.state_dict(), staged)
    digest = hashlib.sha256(staged.read_bytes()).hexdigest()
    name = f"squeezenet1_0-{digest[:8]}.pth"  # torchvision's naming: a sha256 prefix
    staged.rename(directory / name)
    (directory / "squeezenet1_0-00000000.pth").write_bytes((directory / name).read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / name

    monkeypatch.setattr(fdpipe.export.weights, "published_url", lambda arch: f"{url}/{name}")
    with pytest.raises(ModelError, match=f"expected {cached}"):
        load_model("squeezenet1_0", offline=True)  # offline: the message names the file
    model = load_model("squeezenet1_0", offline=False)
    assert cached.is_file() and model.weights_id == digest
    image = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(model.module(image), source.eval()(image))
    assert load_model("squeezenet1_0", offline=True).weights_id == digest  # from the cache now

    wrong = "squeezenet1_0-00000000.pth"  # content does not match the hash in its name
    monkeypatch.setattr(fdpipe.export.weights, "published_url", lambda arch: f"{url}/{wrong}")
    with pytest.raises(ModelError, match="could not fetch"):
        load_model("squeezenet1_0", offline=False)
    assert not (cached.parent / wrong).exists()


def test_timm_model_from_a_state_dict_with_its_pretrained_preprocessing(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    source = timm.create_model("resnet10t", num_classes=5).eval()
    torch.save(source.state_dict(), tmp_path / "timm5.pth")
    model = load_model("timm:resnet10t", weights=tmp_path / "timm5.pth")
    config = timm.data.resolve_data_config({}, model=source)
    assert isinstance(model.preprocess, Preprocess)
    assert model.preprocess.resize == "crop"
    assert model.preprocess.crop_fraction == pytest.approx(config["crop_pct"])
    assert model.preprocess.size == tuple(config["input_size"][1:])
    assert model.num_classes == 5 and model.layer == "layer4" and model.source == "timm:resnet10t"
    with pytest.raises(ModelError, match="downloads are off"):
        load_model("timm:resnet10t", offline=True)
    with pytest.raises(ModelError, match="timm: Unknown model"):
        load_model("timm:no_such_net", pretrained=False)


def test_factory_in_a_python_file(factory_file: Path, tmp_path: Path) -> None:
    model = load_model(f"{factory_file}:tiny", preprocess=SMALL)
    assert model.layer == "features" and model.num_classes == 4
    assert model.source == f"factory:{factory_file}:tiny"
    weights = tmp_path / "tiny.pth"
    trained = {k: torch.full_like(v, 0.01) for k, v in model.module.state_dict().items()}
    torch.save(trained, weights)
    loaded = load_model(f"{factory_file}:tiny", weights=weights, preprocess=SMALL)
    assert all(torch.equal(v, trained[k]) for k, v in loaded.module.state_dict().items())
    with pytest.raises(ModelError, match=r"returned a int, not a torch nn\.Module"):
        load_model(f"{factory_file}:not_a_model")
    with pytest.raises(ModelError, match="has no callable 'nope'"):
        load_model(f"{factory_file}:nope")
    with pytest.raises(ModelError, match=r"cannot import 'no_such_package_xyz\.models'"):
        load_model("no_such_package_xyz.models:build")


def test_torchscript_archive_is_cut_by_its_children(tmp_path: Path) -> None:
    torch.manual_seed(0)
    eager = torchvision.models.resnet18(num_classes=6).eval()
    path = tmp_path / "resnet.ts"
    torch.jit.save(torch.jit.script(eager), path)
    model = load_model(str(path), layer="layer4", preprocess=SMALL)
    assert model.source == f"torchscript:{path}" and model.num_classes == 6
    network = split_at(model.module, "layer4", model.input_shape)
    images = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(network(images), eager(images))
    with pytest.raises(ModelError, match=r"inside 'layer4\.1', which is not a Sequential"):
        split_at(model.module, "layer4.1.conv2", model.input_shape)
    with pytest.raises(ModelError, match="TorchScript modules cannot be exported"):
        export_model(model, tmp_path / "artifacts")


def test_pickled_module_needs_trust_and_never_runs_without_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save(_Evil(str(marker)), evil)
    for load in (
        lambda: load_model(str(evil)),
        lambda: load_model("resnet18", weights=evil),
    ):
        with pytest.raises(ModelError, match="--trust-pickle"):
            load()
        assert not marker.exists()
    whole = tmp_path / "whole.pt"
    torch.save(torchvision.models.resnet18(num_classes=3), whole)
    with pytest.raises(ModelError, match="refused"):
        load_model(str(whole))
    model = load_model(str(whole), trust_pickle=True, preprocess=SMALL)
    assert model.num_classes == 3 and model.source == f"pickle:{whole}"


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (Path(self.path),))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (lambda p: torch.save(torch.zeros(3), p), "holds a Tensor, not a state dict"),
        (lambda p: p.write_bytes(b"\x00garbage" * 10), "cannot be used"),
        (lambda p: p.write_bytes(b""), "cannot be used"),
        (lambda p: torch.save({"fc.weight": torch.zeros(3, 512)}, p), "does not fit"),
        (lambda p: torch.save({"a": 1}, p), "values must all be tensors"),
    ],
    ids=["tensor", "garbage", "empty", "missing-keys", "not-tensors"],
)
def test_bad_weights_files_are_clear_errors(tmp_path: Path, content, message: str) -> None:
    path = tmp_path / "bad.pth"
    content(path)
    with pytest.raises(ModelError, match=message):
        load_model("resnet18", weights=path)


def test_preprocessing_is_data(photos: dict) -> None:
    cat = photos["cat"]  # 451 x 300
    crop = Preprocess((224, 224), Normalisation.named("imagenet"), "crop")
    expected = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()(cat)
    torch.testing.assert_close(crop(cat), expected, atol=1e-5, rtol=0)
    left, top, right, bottom = crop.crop_box(cat.width, cat.height)
    assert top == pytest.approx(300 * 16 / 256) and bottom == pytest.approx(300 * 240 / 256)
    assert right - left == pytest.approx(bottom - top, abs=2)  # a square of the original
    assert left == pytest.approx((451 - (right - left)) / 2, abs=1.5)
    squash = crop.__class__((64, 96), crop.normalisation)
    assert squash(cat).shape == (3, 64, 96) and squash.crop_box(451, 300) == (0, 0, 451, 300)
    gray = PreprocessOptions(size=(128, 128), channels=1, normalisation="none").apply(squash)
    assert gray(cat).shape == (1, 128, 128) and gray.describe()["channels"] == 1
    with pytest.raises(ModelError, match="std must be finite and > 0"):
        PreprocessOptions(std=(0.0, 1.0, 1.0)).apply(squash)
    with pytest.raises(ModelError, match="need 3 value"):
        PreprocessOptions(mean=(0.5, 0.5)).apply(squash)
    one = PreprocessOptions(mean=(0.5,)).apply(squash)  # one value: every channel (issue 19, 8)
    assert one.describe()["mean"] == [0.5, 0.5, 0.5]
    # --mean/--std are R,G,B on [0, 1] pixels, whatever the model's own scale and channel order
    caffe = Preprocess((64, 96), Normalisation.named("caffe"))
    pixels = torch.rand(3, 64, 96)
    mean, std = torch.tensor([0.4, 0.5, 0.6]).view(3, 1, 1), 0.2
    both = PreprocessOptions(mean=(0.4, 0.5, 0.6), std=(std,)).apply(caffe)
    torch.testing.assert_close(both.normalisation(pixels), ((pixels - mean) / std).flip(0))
    caffe_std = PreprocessOptions(mean=(0.4, 0.5, 0.6)).apply(caffe)  # caffe's std: 1 on 0..255
    torch.testing.assert_close(caffe_std.normalisation(pixels), ((pixels - mean) * 255).flip(0))
    bgr = torch.tensor(Normalisation.named("caffe").mean).view(3, 1, 1)  # caffe's mean, 0..255
    caffe_mean = PreprocessOptions(std=(std,)).apply(caffe)
    torch.testing.assert_close(caffe_mean.normalisation(pixels), (pixels.flip(0) - bgr / 255) / std)
    with pytest.raises(ModelError, match="mean must be finite"):
        PreprocessOptions(mean=(float("nan"),) * 3).apply(squash)


def test_callable_preprocess_such_as_torchvision_transforms(photos: dict) -> None:
    transforms = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()
    torch.manual_seed(0)
    explainer = fdpipe.Explainer(
        torchvision.models.resnet18(num_classes=3), "gradcam", preprocess=transforms
    )
    assert explainer.model.input_size == (224, 224)
    torch.testing.assert_close(explainer.batch(photos["cat"])[0].cpu(), transforms(photos["cat"]))


class _Tokens(nn.Module):
    """(B, N, K) with N = 8 channels of a 16 x 16 conv map: tokens that are not the image's grid."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 8, 4, stride=4)
        self.mix = nn.Identity()
        self.classifier = nn.Linear(8 * 256, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.mix(self.proj(x).flatten(2)).flatten(1))


def test_tokens_that_are_not_a_patch_grid_are_refused() -> None:
    with pytest.raises(
        ModelError, match=r"'mix' 8 tokens are not 0 prefix tokens plus a patch grid"
    ):
        fdpipe.Explainer(_Tokens(), "gradcam", target_layer="mix", preprocess=SMALL)


@pytest.mark.parametrize("score", ["sigmoid", "logit"])
def test_score_gives_what_the_probability_means(score: str) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5)
    result = fdpipe.explain(model, torch.randn(1, 3, 64, 64), "gradcam", score=score)
    if score == "sigmoid":
        torch.testing.assert_close(result.probabilities, result.logits.sigmoid())
    else:
        assert result.probabilities.isnan().all()


# ---- export parity on own models ------------------------------------------------------------


def _own_model(which: str, finetuned, factory_file: Path, size: int) -> LoadedModel:
    if which == "finetuned":
        options = PreprocessOptions(size=(size, size))
        return load_model(
            "resnet18", weights=finetuned[0], class_names=finetuned[1], preprocess=options
        )
    if which == "densenet121":  # DenseNet's head applies F.relu(inplace=True) to the cut
        return load_model(
            "densenet121", pretrained=False, preprocess=PreprocessOptions(size=(size, size))
        )
    options = PreprocessOptions(size=(2 * size, 2 * size), channels=1, normalisation="none")
    return load_model(f"{factory_file}:gray", preprocess=options)  # grayscale, 128 px


@pytest.mark.parametrize(
    "which",
    # DenseNet's export takes 20 s; the grayscale factory's runs in the CLI tests.
    ["finetuned", pytest.param("densenet121", marks=pytest.mark.slow)],
)
def test_export_parity_and_manifest(which: str, finetuned, factory_file: Path, tmp_path: Path):
    model = _own_model(which, finetuned, factory_file, 64)
    manifest = export_model(model, tmp_path / "artifacts")
    assert max(manifest.parity_max_relative_error.values()) <= PARITY_TOLERANCE
    assert manifest.source == model.source and manifest.num_classes == model.num_classes
    assert manifest.input_shape == list(model.input_shape)
    assert manifest.preprocessing == model.preprocess.describe()
    assert load_manifest(tmp_path / "artifacts", model) == manifest
    with pytest.raises(ModelError, match="preprocessing is"):
        load_manifest(tmp_path / "artifacts", _own_model(which, finetuned, factory_file, 48))
    exported = fdpipe.Explainer(
        model, "fdcam", runtime="onnxruntime", artifacts=tmp_path / "artifacts"
    )
    plain = fdpipe.Explainer(model, "fdcam", runtime="torch")
    images = torch.randn(2, *model.input_shape)
    torch.testing.assert_close(
        exported(images)["fdcam"].maps, plain(images)["fdcam"].maps, atol=1e-3, rtol=1e-3
    )


def test_own_model_parameters_are_recorded(finetuned) -> None:
    explainer = fdpipe.Explainer(
        "resnet18", "gradcam", weights=finetuned[0], class_names=finetuned[1], preprocess=SMALL
    )
    model = explainer.model
    assert model.source == "torchvision:resnet18" and model.num_classes == 10
    assert model.preprocess.describe()["resize"] == [64, 64]


@pytest.mark.parametrize(
    ("name", "size", "layer"),
    [
        ("mobilenet_v3_small", 64, "features"),
        ("convnext_tiny", 64, "features"),
        ("regnet_y_400mf", 64, "trunk_output"),
        ("inception_v3", 160, "Mixed_7c"),
        ("googlenet", 64, "inception5b"),
    ],
)
def test_architectures_explain_exactly_at_their_default_layer(
    name: str, size: int, layer: str
) -> None:
    """Random weights at a small size: the default layer is the last feature map, and FD-CAM's
    fast masked-head scores (factorised where it holds) equal the plain masking loop's. (The
    maps are not compared: random Inception weights give switch scores of 1e-8 whose min-max
    turns float rounding into visible map changes.)"""
    model = load_model(name, pretrained=False, preprocess=PreprocessOptions(size=(size, size)))
    assert model.layer == layer
    images = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    fast = fdpipe.Explainer(model, "fdcam", runtime="torch")(images)["fdcam"]
    plain = fdpipe.Explainer(model, "fdcam", runtime=REFERENCE_RUNTIME)(images)["fdcam"]
    assert fast.scores is not None and plain.scores is not None
    scale = float(plain.scores.abs().max())
    torch.testing.assert_close(fast.scores, plain.scores, atol=1e-4 * scale + 1e-7, rtol=0)
    assert fast.native.shape[-2:] == plain.native.shape[-2:] and fast.native.shape[-1] > 1


def test_registered_model_with_a_finetuned_state_dict(tmp_path: Path) -> None:
    """A registry name keeps its layer and preprocessing; the class count is the weights'."""
    torch.manual_seed(0)
    source = torchvision.models.squeezenet1_1(num_classes=10).eval()
    torch.save(source.state_dict(), tmp_path / "sq10.pth")
    model = load_model("squeezenet1_1", weights=tmp_path / "sq10.pth")
    assert model.num_classes == 10 and model.layer == "features.12"
    assert model.preprocess.normalisation.name == "caffe" and model.source == "squeezenet1_1"
    image = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(model.module(image), source(image))


def test_class_names_must_be_a_readable_text_file(tmp_path: Path) -> None:
    fifo = tmp_path / "names.fifo"
    os.mkfifo(fifo)
    with pytest.raises(ModelError, match="not a regular file"):
        read_class_names(fifo)  # would block on open
    latin = tmp_path / "names.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ModelError, match="cannot read class names"):
        read_class_names(latin)


def test_classes_and_top_k_together_are_refused() -> None:
    module = torchvision.models.resnet18(num_classes=3)
    with pytest.raises(ValueError, match="classes or top_k, not both"):
        fdpipe.Explainer(module, "gradcam", preprocess=SMALL, classes=[1], top_k=2)
    explainer = fdpipe.Explainer(module, "gradcam", preprocess=SMALL)
    with pytest.raises(ValueError, match="classes or top_k, not both"):
        explainer(torch.randn(1, 3, 64, 64), classes=[1], top_k=2)


TIMM_FACTORY = """
import timm


def build():
    return timm.create_model("resnet10t", num_classes=3)
"""


def test_a_factory_timm_model_keeps_its_own_preprocessing(tmp_path: Path) -> None:
    """Issue 19, item 7: once ImageNet's mean/std and a squash resize, whatever the model's
    ``pretrained_cfg`` said; the user's options still override it."""
    timm = pytest.importorskip("timm")
    (tmp_path / "net.py").write_text(TIMM_FACTORY)
    expected = load_model("timm:resnet10t", pretrained=False).preprocess  # timm's own config
    config = timm.data.resolve_data_config({}, model=timm.create_model("resnet10t"))
    assert isinstance(expected, Preprocess) and expected.resize == "crop"
    assert expected.interpolation == config["interpolation"]
    assert expected.crop_fraction == pytest.approx(config["crop_pct"])
    built = load_model(f"{tmp_path / 'net.py'}:build")
    in_memory = fdpipe.Explainer(timm.create_model("resnet10t", num_classes=3), "gradcam").model
    assert built.preprocess == expected and in_memory.preprocess == expected
    squash = load_model(
        f"{tmp_path / 'net.py'}:build", preprocess=PreprocessOptions(resize="squash")
    )
    assert squash.preprocess == PreprocessOptions(resize="squash").apply(expected)
    plain = fdpipe.Explainer(torchvision.models.resnet18(num_classes=3), "gradcam").model
    assert plain.preprocess.describe()["kind"] == "imagenet"  # no config of its own


@pytest.mark.parametrize(
    "preprocess",
    [
        Preprocess((224, 224), Normalisation.named("imagenet")),
        Preprocess((80, 96), Normalisation.named("caffe"), "crop", 0.8, interpolation="nearest"),
        Preprocess(
            (299, 299),
            Normalisation("timm", (0.5,) * 3, (0.25,) * 3),
            "crop",
            0.95,
            interpolation="bicubic",
        ),
        Preprocess((64, 64), Normalisation.named("none", 1), channels=1),
        Preprocess(
            (224, 224),
            Normalisation.named("imagenet"),
            "crop",
            before_crop=(256, 240),
            resampler="torchvision",
            interpolation="bicubic",
        ),
        Preprocess((224, 224), Normalisation.named("imagenet"), "crop", before_crop=256),
        PreprocessOptions(mean=(0.4,), std=(0.3, 0.2, 0.1), normalisation="tf-lite").apply(
            Preprocess((32, 48), Normalisation.named("imagenet"))
        ),
    ],
    ids=["imagenet", "caffe-crop-nearest", "timm-bicubic", "gray", "hf-crop", "hf-side", "custom"],
)
def test_every_preprocessing_field_round_trips_through_its_record(preprocess: Preprocess) -> None:
    """What an output records rebuilds the same preprocessing (``evaluate --maps``, item 5)."""
    recorded = json.loads(json.dumps(preprocess.describe()))
    assert Preprocess.described(recorded) == preprocess
    assert f"{preprocess.size[0]}x{preprocess.size[1]}" in preprocess.summary()
    for key in ("resize", "mean", "kind"):  # a tampered record: one line, no traceback
        with pytest.raises(ModelError, match="not fdpipe's"):
            Preprocess.described({k: v for k, v in recorded.items() if k != key})
    with pytest.raises(ModelError, match="caller's own"):
        Preprocess.described({"callable": "<lambda>", "input_size": [224, 224]})
