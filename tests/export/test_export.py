"""`fdpipe export`: graphs, manifest, parity, refusing foreign artifacts, no half-written output."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from fdpipe.cli import main
from fdpipe.export.loading import LoadedModel, load_model
from fdpipe.export.onnx import (
    MANIFEST,
    PARITY_TOLERANCE,
    ArtifactMismatch,
    artifact,
    export_model,
    load_manifest,
)
from fdpipe.export.tensorrt import tensorrt_missing

GRAPHS = ("backbone.onnx", "head.onnx", "masked_head.onnx", "masked_head_probabilities.onnx")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("export") / "squeezenet"
    result = CliRunner().invoke(main, ["export", "--model", "squeezenet1_1", "-o", str(output)])
    assert result.exit_code == 0, result.output
    assert "masked_head: factorised" in result.output
    return output


def test_export_writes_graphs_and_manifest(exported: Path, squeezenet: LoadedModel) -> None:
    assert sorted(p.name for p in exported.iterdir()) == sorted([*GRAPHS, MANIFEST])
    manifest = json.loads((exported / MANIFEST).read_text())
    assert manifest["model"] == "squeezenet1_1"
    assert manifest["weights"] == squeezenet.weights_id
    assert manifest["layer"] == "features.12"
    assert manifest["activation_shape"] == [512, 13, 13]
    assert manifest["input_shape"] == [3, 224, 224]
    assert manifest["preprocessing"]["kind"] == "caffe"
    assert manifest["masked_head"] == {
        "masked_head": "factorised",
        "masked_head_probabilities": "explicit",  # all logits of a 1x1 conv: no saving
    }
    assert set(manifest["parity_max_relative_error"]) == set(GRAPHS)
    assert max(manifest["parity_max_relative_error"].values()) <= PARITY_TOLERANCE
    for name in GRAPHS:
        digest = hashlib.sha256((exported / name).read_bytes()).hexdigest()
        assert manifest["files"][name]["sha256"] == digest


def test_graphs_have_dynamic_batch_mask_and_target_dims(exported: Path) -> None:
    session = ort.InferenceSession(str(exported / "masked_head.onnx"))
    shapes = {i.name: i.shape for i in session.get_inputs()}
    assert shapes == {
        "activations": ["batch", 512, 13, 13],
        "masks": ["batch", "masks", 512],
        "classes": ["batch", "targets"],
    }
    backbone = ort.InferenceSession(str(exported / "backbone.onnx"))
    assert backbone.get_inputs()[0].shape == ["batch", 3, 224, 224]


def test_head_graph_equals_torch_head(exported: Path, squeezenet_net) -> None:
    session = ort.InferenceSession(str(exported / "head.onnx"))
    with torch.no_grad():
        activations, _ = squeezenet_net.features(torch.randn(2, 3, 224, 224))
        expected = squeezenet_net.head(activations)
    (logits,) = session.run(None, {"activations": activations.numpy()})
    torch.testing.assert_close(torch.from_numpy(logits), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("load", "field"),
    [
        (lambda: load_model("squeezenet1_1", layer="features.11"), "layer"),
        (lambda: load_model("squeezenet1_1", pretrained=False), "weights"),
        (lambda: load_model("resnet18", layer="layer4", pretrained=False), "model"),
    ],
    ids=["layer", "weights", "model"],
)
def test_manifest_of_another_model_is_refused(exported: Path, load, field: str) -> None:
    with pytest.raises(ArtifactMismatch, match=f"{field} is"):
        load_manifest(exported, load())


def test_modified_graph_is_refused(exported: Path, squeezenet: LoadedModel, tmp_path: Path) -> None:
    manifest = load_manifest(exported, squeezenet)
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "head.onnx").write_bytes((exported / "head.onnx").read_bytes()[:-10])
    with pytest.raises(ArtifactMismatch, match="sha256"):
        artifact(copy, manifest, "head.onnx")


def test_failed_export_leaves_previous_output_untouched(tmp_path: Path) -> None:
    output = tmp_path / "artifacts"
    output.mkdir()
    (output / "backbone.onnx").write_text("previous export")
    (output / MANIFEST).write_text('{"files": {"backbone.onnx": {}}}')

    def failing_engines(directory: Path, manifest: dict) -> dict:
        assert (directory / "masked_head.onnx").is_file()  # graphs exist, engines fail
        raise RuntimeError("engine build failed")

    model = load_model("resnet18", layer="layer4.1.conv2", pretrained=False)
    with pytest.raises(RuntimeError, match="engine build failed"):
        export_model(model, output, engines=failing_engines)
    assert [p.name for p in tmp_path.iterdir()] == ["artifacts"]  # no staging directory left
    assert sorted(p.name for p in output.iterdir()) == ["backbone.onnx", MANIFEST]
    assert (output / "backbone.onnx").read_text() == "previous export"


@pytest.mark.skipif(tensorrt_missing() is None, reason="TensorRT and a GPU are present")
def test_trt_without_gpu_fails_clearly_and_writes_nothing(tmp_path: Path) -> None:
    output = tmp_path / "engines"
    args = ["export", "--model", "squeezenet1_1", "-o", str(output), "--trt", "--fp16"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert tensorrt_missing() in result.output and "Nothing was written" in result.output
    assert list(tmp_path.iterdir()) == []


def test_fp16_export_adds_fp16_graphs_within_their_tolerance(tmp_path: Path) -> None:
    """FP16 graphs (FP32 inputs/outputs) for ONNX Runtime CUDA and strongly typed TensorRT."""
    output = tmp_path / "x"
    args = ["export", "--model", "squeezenet1_1", "-o", str(output), "--precision", "fp16"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["precision"] == "fp16"
    parity = manifest["parity_max_relative_error"]
    for name in ("backbone", "masked_head", "masked_head_probabilities"):
        assert 0 < parity[f"{name}.fp16.onnx"] <= 1e-2  # FP16 rounding, bounded
        assert parity[f"{name}.onnx"] <= 1e-4
        assert f"{name}.fp16.onnx" in manifest["files"]
    session = ort.InferenceSession(str(output / "backbone.fp16.onnx"))
    assert session.get_inputs()[0].type == "tensor(float)"  # FP32 at the edges
