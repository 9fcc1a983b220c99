"""TensorRT engine planning that runs without a GPU: version range, profiles, precision."""

from __future__ import annotations

import pytest
import torch
from fdpipe.export import tensorrt
from fdpipe.export.onnx import Manifest
from fdpipe.export.tensorrt import (
    EXPLICIT_CHUNK,
    MAX_ELEMENTS,
    EngineOptions,
    build_engines,
    engine_mismatch,
    graph_file,
    profile_shapes,
    unsupported_version,
)
from manifests import make_manifest


def _manifest(activation: list[int], classes: int, probabilities: str) -> Manifest:
    inputs = {"inputs": ["activations", "masks", "classes"]}
    return make_manifest(
        activation_shape=activation,
        num_classes=classes,
        masked_head={"masked_head": "factorised", "masked_head_probabilities": probabilities},
        files={
            "backbone.onnx": {"inputs": ["images"]},
            "masked_head.onnx": inputs,
            "masked_head_probabilities.onnx": inputs,
        },
    )


@pytest.mark.parametrize(
    ("version", "refused"),
    [("10.16.0", False), ("11.4.0", False), ("9.3.0", True), ("12.0.1", True), ("x", True)],
)
def test_versions_outside_the_tested_range_are_refused(version: str, refused: bool) -> None:
    reason = unsupported_version(version)
    assert (reason is not None) == refused
    if refused and version != "x":
        assert "tested range 10.x-11.x" in reason and "tensorrt>=10,<12" in reason


def test_squeezenet_explicit_profile_is_sized_by_the_runner_chunk() -> None:
    """SqueezeNet's explicit probabilities graph: 16 x 1,024 masks x 1,000 x 13 x 13 was 2.77e9
    elements, past TensorRT's limit; the runner sends 128 masks per call."""
    manifest = _manifest([512, 13, 13], 1000, "explicit")
    options = EngineOptions()
    explicit = profile_shapes("masked_head_probabilities", manifest, options)
    low, _, high = explicit["masks"]
    assert high == (16, EXPLICIT_CHUNK, 512) and low == (1, 1, 512)
    assert high[0] * high[1] * 1000 * 13 * 13 <= MAX_ELEMENTS
    factorised = profile_shapes("masked_head", manifest, options)
    assert factorised["masks"][2] == (16, 1024, 512)  # every FD-CAM mask at once
    assert factorised["classes"][2] == (16, options.max_targets)
    assert profile_shapes("backbone", manifest, options) == {
        "images": ((1, 3, 224, 224), (8, 3, 224, 224), (16, 3, 224, 224))
    }


def test_explicit_profile_lowers_the_batch_past_the_tensor_limit() -> None:
    manifest = _manifest([2048, 28, 28], 1000, "explicit")  # 128 masks x 1.6e6 per image
    shapes = profile_shapes("masked_head_probabilities", manifest, EngineOptions())
    batch = shapes["activations"][2][0]
    assert batch < 16 and batch * EXPLICIT_CHUNK * 2048 * 28 * 28 <= MAX_ELEMENTS


def test_fp16_engines_build_from_the_fp16_graphs_and_bf16_is_refused() -> None:
    assert graph_file("backbone", "fp16") == "backbone.fp16.onnx"
    assert graph_file("backbone", "fp32") == "backbone.onnx"
    with pytest.raises(ValueError, match="fp32 or fp16"):
        build_engines(None, {}, EngineOptions(precision="bf16"))  # type: ignore[arg-type]


def test_engines_of_another_tensorrt_or_gpu_are_named(monkeypatch) -> None:
    monkeypatch.setattr(tensorrt, "tensorrt_version", lambda: "11.4.0")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "NVIDIA H100")
    assert engine_mismatch({"version": "11.4.0", "device": "NVIDIA H100"}) is None
    reason = engine_mismatch({"version": "10.16.0", "device": "NVIDIA H100"})
    assert reason is not None and "'10.16.0', here '11.4.0'" in reason
