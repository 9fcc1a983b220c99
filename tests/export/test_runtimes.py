"""Runners (ONNX Runtime; TensorRT where present) equal plain masked evaluation; backend choice."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import logging
import re
from pathlib import Path

import pytest
import torch
from fdpipe.backends import BackendError, select_backend
from fdpipe.export.loading import LoadedModel, load_model
from fdpipe.export.onnx import (
    ArtifactMismatch,
    Manifest,
    export_graph,
    export_model,
    masked_head_graph,
)
from fdpipe.export.runners import (
    ChannelsLastBackbone,
    OnnxRunner,
    RunnerBackbone,
    RunnerError,
    RunnerMaskedHead,
    TensorRTRunner,
    aligned,
    onnx_providers,
    output_shapes,
)
from fdpipe.export.split import split_at
from fdpipe.export.tensorrt import EngineOptions, build_engine, tensorrt_missing
from fdpipe.kernels import FDCAM, ExplicitMaskedHead, SplitNetwork, prepare
from fdpipe.kernels.factorised_head import FactorisedMaskedHead
from fdpipe.kernels.fdcam import similarity_groups
from fdpipe.kernels.precision import ieee_fp32

MODELS = {  # name -> (layer, real weights)
    "vgg16": ("features.30", False),
    "squeezenet1_1": ("features.12", True),
    "resnet18": ("layer4", False),
    "resnet18-inner": ("layer4.1.conv2", False),  # residual extra input: explicit masking
}


@pytest.fixture(scope="module")
def squeezenet_artifacts(tmp_path_factory: pytest.TempPathFactory, squeezenet) -> Path:
    return _export(squeezenet, tmp_path_factory.mktemp("artifacts") / "squeezenet")


@pytest.fixture
def own_squeezenet(squeezenet: LoadedModel) -> LoadedModel:
    """A copy for ``select_backend``, which moves the module to CUDA on GPU machines: the shared
    fixture stays on the CPU for the tests that feed it CPU tensors."""
    return dataclasses.replace(squeezenet, module=copy.deepcopy(squeezenet.module))


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


def test_onnx_backend_gives_the_torch_fdcam_weights(
    squeezenet, own_squeezenet, squeezenet_artifacts, photos
):
    images = torch.stack([squeezenet.preprocess(photos[p]) for p in ("cat", "astronaut")])
    backend = select_backend(own_squeezenet, artifacts=squeezenet_artifacts, runtime="onnxruntime")
    assert isinstance(backend.network.backbone, RunnerBackbone)
    assert isinstance(backend.scorer, RunnerMaskedHead)
    provider = onnx_providers()[0].removesuffix("ExecutionProvider")  # CUDA on GPU machines
    assert backend.description.startswith(
        f"backbone=onnxruntime({provider}) head-scores=onnxruntime"
    )
    reference = split_at(squeezenet.module, squeezenet.layer)
    expected = FDCAM()(prepare(reference, images, scorer=ExplicitMaskedHead(reference.head)))
    device = backend.network.device
    with ieee_fp32():  # as Explainer runs it: no TF32 in the torch head's gradients on CUDA
        actual = FDCAM()(prepare(backend.network, images.to(device), scorer=backend.scorer))
    torch.testing.assert_close(actual.weights.cpu(), expected.weights, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(actual.maps.cpu(), expected.maps, rtol=1e-4, atol=1e-4)


def test_auto_without_artifacts_is_torch_factorised(own_squeezenet) -> None:
    backend = select_backend(own_squeezenet)
    assert isinstance(backend.scorer, FactorisedMaskedHead)
    assert backend.description.startswith("backbone=torch head-scores=torch-factorised")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU machine runs ONNX Runtime CUDA")
def test_auto_with_artifacts_times_torch_against_onnxruntime(
    own_squeezenet, squeezenet_net, squeezenet_artifacts, caplog
):
    with caplog.at_level("INFO", logger="fdpipe.backends"):
        backend = select_backend(own_squeezenet, artifacts=squeezenet_artifacts)
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
def test_unusable_runtime_is_refused(own_squeezenet, runtime: str, message: str) -> None:
    with pytest.raises(BackendError, match=message):
        select_backend(own_squeezenet, runtime=runtime)


def test_artifacts_of_another_layer_are_refused(squeezenet_artifacts) -> None:
    other = load_model("squeezenet1_1", layer="features.11")
    with pytest.raises(ArtifactMismatch, match=r"layer is 'features\.12', not 'features\.11'"):
        select_backend(other, artifacts=squeezenet_artifacts, runtime="torch")


@pytest.mark.skipif(tensorrt_missing() is None, reason="TensorRT and a GPU are present")
def test_tensorrt_runtime_without_gpu_says_why(squeezenet, squeezenet_artifacts) -> None:
    with pytest.raises(BackendError, match=re.escape(tensorrt_missing())):  # "[tensorrt]"
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


def _with_engines(manifest: Manifest, precision: str = "fp32") -> Manifest:
    engines = {"version": "10.16.0", "device": "H100", "precision": precision}
    return dataclasses.replace(manifest, tensorrt=engines)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_auto_passes_over_engines_it_cannot_run_and_tensorrt_refuses(
    own_squeezenet, squeezenet_artifacts, monkeypatch, caplog, precision: str
) -> None:
    """Engines of another TensorRT/GPU (fp32) or precision (fp16 engines, fp32 asked)."""
    import fdpipe.backends as backends
    from fdpipe.export.onnx import load_manifest

    monkeypatch.setattr(backends, "tensorrt_missing", lambda: None)
    monkeypatch.setattr(
        backends, "load_manifest", lambda d, m: _with_engines(load_manifest(d, m), precision)
    )
    monkeypatch.setattr(
        backends, "engine_mismatch", lambda entry: "built for another TensorRT or GPU (x)"
    )
    reason = "another TensorRT" if precision == "fp32" else "are fp16, not fp32"
    with pytest.raises(BackendError, match=reason):
        select_backend(own_squeezenet, artifacts=squeezenet_artifacts, runtime="tensorrt")
    with caplog.at_level(logging.WARNING, logger="fdpipe.backends"):
        backend = select_backend(own_squeezenet, artifacts=squeezenet_artifacts, runtime="auto")
    assert "tensorrt" not in backend.description
    assert any("not using TensorRT" in r.message and reason in r.message for r in caplog.records)


class _FakeSession:
    """An ONNX Runtime session whose CUDA provider failed to load (it then runs on the CPU)."""

    def __init__(self, path: str, options: object, providers: list, provider_options: list):
        self.provider_options = provider_options

    def get_providers(self) -> list[str]:
        return ["CPUExecutionProvider"]


def test_onnx_runner_refuses_a_cuda_provider_that_did_not_load(
    squeezenet_artifacts, monkeypatch
) -> None:
    import fdpipe.export.runners as runners

    monkeypatch.setattr(runners.ort, "InferenceSession", _FakeSession)
    monkeypatch.setattr(runners.torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(runners.torch.cuda, "Stream", lambda: type("S", (), {"cuda_stream": 7}))
    runner = OnnxRunner(
        squeezenet_artifacts / "backbone.onnx", ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    with pytest.raises(RunnerError, match=r"could not use CUDAExecutionProvider.*CPUExecution"):
        runner.session  # noqa: B018
    options = runner._provider_options()[0]
    assert options["use_tf32"] == "0" and options["user_compute_stream"] == "7"


def test_output_shapes_follow_the_named_dynamic_dims() -> None:
    inputs = {"activations": (3, 8, 2, 2), "masks": (3, 40, 8), "classes": (3, 2)}
    dims = {
        "activations": ["batch", 8, 2, 2],
        "masks": ["batch", "masks", 8],
        "classes": ["batch", "targets"],
    }
    outputs = {"scores": ["batch", "targets", "masks"]}
    assert output_shapes(inputs, dims, outputs) == {"scores": (3, 2, 40)}
    assert output_shapes(inputs, dims, {"scores": ["batch", "unknown"]}) is None


def test_aligned_copies_only_misaligned_slices() -> None:
    shifted = torch.arange(49, dtype=torch.int64)[1:].view(16, 3)  # 8 bytes into its storage
    classes = aligned(shifted)
    assert classes.data_ptr() % 256 == 0 and torch.equal(classes, shifted)
    assert aligned(classes) is classes  # aligned already: no copy
    part = classes.split(5)[1]  # starts 5 rows (120 bytes) after an aligned address
    assert part.data_ptr() % 256 != 0
    copied = aligned(part)
    assert copied.data_ptr() % 256 == 0
    torch.testing.assert_close(copied, part)


class _HeadRunner:
    """A runner over a torch masked-head module that checks the profile's limits."""

    name = "fake"
    input_names = ("activations", "masks", "classes")

    def __init__(self, scorer: FactorisedMaskedHead, max_masks: int, max_targets: int) -> None:
        self.scorer, self.max_masks, self.max_targets = scorer, max_masks, max_targets

    def __call__(self, activations, masks, classes) -> list[torch.Tensor]:
        assert masks.shape[1] <= self.max_masks and classes.shape[1] <= self.max_targets
        return [self.scorer(activations, masks, classes)]


def test_runner_masked_head_splits_masks_and_targets_to_the_profile(squeezenet_net) -> None:
    activations = torch.rand(2, 512, 13, 13)
    masks = _fdcam_and_random_masks(activations)
    classes = torch.tensor([[1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11, 12, 13, 14]])  # 7 > 5 targets
    torch_scorer = FactorisedMaskedHead(squeezenet_net.head)
    runner = _HeadRunner(torch_scorer, max_masks=16, max_targets=5)
    scorer = RunnerMaskedHead(
        runner, runner, fallback=torch_scorer, chunks=(16, 16), max_targets=(5, 5)
    )
    expected = ExplicitMaskedHead(squeezenet_net.head)(activations, masks, classes)
    _assert_equal_scores(scorer(activations, masks, classes), expected)


@pytest.mark.skipif(
    "CUDAExecutionProvider" in onnx_providers(), reason="the CPU onnxruntime package only"
)
def test_auto_on_a_gpu_without_onnxruntimes_cuda_provider_is_torch(
    own_squeezenet, squeezenet_artifacts, monkeypatch
) -> None:
    """ONNX Runtime on the CPU beside a GPU torch network would copy through host memory."""
    import fdpipe.backends as backends

    class OnGPU(SplitNetwork):  # what split_at gives on a GPU machine, without one
        device = property(lambda self: torch.device("cuda", 0))

    def split_on_gpu(*args, **kwargs) -> SplitNetwork:
        network = split_at(*args, **kwargs)
        network.__class__ = OnGPU
        return network

    monkeypatch.setattr(backends, "split_at", split_on_gpu)
    monkeypatch.setattr(backends, "_calibrate", lambda *_: pytest.fail("timed CPU engines"))
    backend = select_backend(own_squeezenet, artifacts=squeezenet_artifacts, runtime="auto")
    assert backend.description.startswith("backbone=torch head-scores=torch-factorised")
