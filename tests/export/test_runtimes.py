"""Runners (ONNX Runtime; TensorRT where present) equal plain masked evaluation; backend choice."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from fdpipe.backends import BackendError, select_backend
from fdpipe.export.models import LoadedModel, load_model
from fdpipe.export.onnx import ArtifactMismatch, export_graph, export_model, masked_head_graph
from fdpipe.export.runners import (
    ChannelsLastBackbone,
    OnnxRunner,
    RunnerBackbone,
    RunnerMaskedHead,
    TensorRTRunner,
)
from fdpipe.export.split import split_at
from fdpipe.export.tensorrt import EngineOptions, build_engine, tensorrt_missing
from fdpipe.kernels import FDCAM, ExplicitMaskedHead, prepare
from fdpipe.kernels.factorised_head import FactorisedMaskedHead
from fdpipe.kernels.fdcam import similarity_groups

MODELS = {  # name -> (layer, real weights)
    "vgg16": ("features.30", False),
    "squeezenet1_1": ("features.12", True),
    "resnet18": ("layer4", False),
    "resnet18-inner": ("layer4.1.conv2", False),  # residual extra input: explicit masking
}


@pytest.fixture(scope="module")
def squeezenet_artifacts(tmp_path_factory: pytest.TempPathFactory, squeezenet) -> Path:
    return _export(squeezenet, tmp_path_factory.mktemp("artifacts") / "squeezenet")


def _export(model: LoadedModel, output: Path) -> Path:
    export_model(model, output)
    return output


def _fdcam_and_random_masks(activations: torch.Tensor) -> torch.Tensor:
    keep = similarity_groups(activations)[:, :12].to(activations.dtype)
    generator = torch.Generator().manual_seed(0)
    noise = torch.rand(activations.shape[0], 12, activations.shape[1], generator=generator)
    return torch.cat([keep, 1 - keep, (noise < 0.5).to(activations.dtype)], dim=1)


def _assert_equal_scores(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize(
    ("name", "probabilities"),
    [(name, False) for name in MODELS]
    + [(name, True) for name in MODELS if name != "vgg16"],  # 500 MB more to export: slow
)
def test_onnx_masked_head_equals_explicit(name: str, probabilities: bool, tmp_path, photos):
    layer, real = MODELS[name]
    model = load_model(name.removesuffix("-inner"), layer=layer, pretrained=real)
    network = split_at(model.module, model.layer)
    images = torch.stack([model.preprocess(photos[p]) for p in ("cat", "coffee")])
    with torch.no_grad():
        activations, extras = network.features(images)
    masks = _fdcam_and_random_masks(activations)
    classes = torch.tensor([[1, 281], [967, 504]])
    graph = masked_head_graph(network, activations, extras, probabilities=probabilities)
    export_graph(graph, tmp_path / "graph.onnx")
    runner = OnnxRunner(tmp_path / "graph.onnx")
    explicit = ExplicitMaskedHead(network.head)
    scorer = RunnerMaskedHead(runner, runner, fallback=explicit, chunks=(None, 16))
    expected = explicit(activations, masks, classes, extras=extras, probabilities=probabilities)
    actual = scorer(activations, masks, classes, extras=extras, probabilities=probabilities)
    _assert_equal_scores(actual, expected)


def test_onnx_backend_gives_the_torch_fdcam_weights(squeezenet, squeezenet_artifacts, photos):
    images = torch.stack([squeezenet.preprocess(photos[p]) for p in ("cat", "astronaut")])
    backend = select_backend(squeezenet, artifacts=squeezenet_artifacts, runtime="onnxruntime")
    assert isinstance(backend.network.backbone, RunnerBackbone)
    assert isinstance(backend.scorer, RunnerMaskedHead)
    assert backend.description.startswith("backbone=onnxruntime(CPU) head-scores=onnxruntime")
    reference = split_at(squeezenet.module, squeezenet.layer)
    expected = FDCAM()(prepare(reference, images, scorer=ExplicitMaskedHead(reference.head)))
    actual = FDCAM()(prepare(backend.network, images, scorer=backend.scorer))
    torch.testing.assert_close(actual.weights, expected.weights, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(actual.maps, expected.maps, rtol=1e-4, atol=1e-4)


def test_auto_without_artifacts_is_torch_factorised(squeezenet) -> None:
    backend = select_backend(squeezenet)
    assert isinstance(backend.scorer, FactorisedMaskedHead)
    assert backend.description.startswith("backbone=torch head-scores=torch-factorised")


def test_auto_with_artifacts_times_torch_against_onnxruntime(
    squeezenet, squeezenet_net, squeezenet_artifacts, caplog
):
    with caplog.at_level("INFO", logger="fdpipe.backends"):
        backend = select_backend(squeezenet, artifacts=squeezenet_artifacts)
    timed = [r.message for r in caplog.records if " ms, onnxruntime " in r.message]
    assert [m.split(":")[0] for m in timed] == ["backbone", "masked head"]
    assert backend.scorer.name in ("torch-factorised", "onnxruntime(CPU)-masked-head")
    activations = torch.rand(1, 512, 13, 13)
    masks = _fdcam_and_random_masks(activations)
    expected = ExplicitMaskedHead(squeezenet_net.head)(activations, masks, torch.tensor([[9]]))
    _assert_equal_scores(backend.scorer(activations, masks, torch.tensor([[9]])), expected)


@pytest.mark.parametrize(
    ("runtime", "message"),
    [("onnxruntime", "--artifacts"), ("tensorrt", "--artifacts"), ("fast", "unknown runtime")],
)
def test_unusable_runtime_is_refused(squeezenet, runtime: str, message: str) -> None:
    with pytest.raises(BackendError, match=message):
        select_backend(squeezenet, runtime=runtime)


def test_artifacts_of_another_layer_are_refused(squeezenet_artifacts) -> None:
    other = load_model("squeezenet1_1", layer="features.11")
    with pytest.raises(ArtifactMismatch, match=r"layer is 'features\.12', not 'features\.11'"):
        select_backend(other, artifacts=squeezenet_artifacts, runtime="torch")


@pytest.mark.skipif(tensorrt_missing() is None, reason="TensorRT and a GPU are present")
def test_tensorrt_runtime_without_gpu_says_why(squeezenet, squeezenet_artifacts) -> None:
    with pytest.raises(BackendError, match=tensorrt_missing()):
        select_backend(squeezenet, artifacts=squeezenet_artifacts, runtime="tensorrt")


@pytest.mark.skipif(
    tensorrt_missing() is not None or importlib.util.find_spec("tensorrt") is None,
    reason="needs a CUDA GPU and the tensorrt package",
)
def test_tensorrt_masked_head_equals_explicit(squeezenet, squeezenet_net, squeezenet_artifacts):
    engine = squeezenet_artifacts.parent / "masked_head.engine"  # not in the export: no checksum
    profile = {
        "activations": ((1, 512, 13, 13), (2, 512, 13, 13), (4, 512, 13, 13)),
        "masks": ((1, 1, 512), (2, 64, 512), (4, 64, 512)),
        "classes": ((1, 1), (2, 1), (4, 2)),
    }
    build_engine(squeezenet_artifacts / "masked_head.onnx", engine, profile, EngineOptions())
    activations = torch.rand(2, 512, 13, 13)
    masks = _fdcam_and_random_masks(activations)
    classes = torch.tensor([[1, 2], [3, 4]])
    expected = ExplicitMaskedHead(squeezenet_net.head)(activations, masks, classes)
    (actual,) = TensorRTRunner(engine)(activations, masks, classes)
    _assert_equal_scores(actual.cpu(), expected)


def test_channels_last_backbone_is_a_copy_with_the_same_activations(squeezenet_net) -> None:
    images = torch.randn(2, 3, 224, 224)
    backbone = ChannelsLastBackbone(squeezenet_net.backbone)
    with torch.no_grad():
        expected, actual = squeezenet_net.backbone(images), backbone(images)
    assert actual.is_contiguous()
    _assert_equal_scores(actual, expected)
    weights = next(squeezenet_net.backbone.parameters())
    assert weights.is_contiguous()  # the model's own modules keep their layout
