"""Serialized TensorRT engines from the exported ONNX graphs (``fdpipe export --trt``).

Needs a CUDA GPU and the optional ``tensorrt`` package (10.x); ``tensorrt_missing`` says why
not before anything is written. One optimisation profile per engine covers batches of
1..``max_batch`` images and up to ``max_masks`` masks and ``max_targets`` classes per image.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

ENGINES = ("backbone", "masked_head", "masked_head_probabilities")


@dataclass(frozen=True)
class EngineOptions:
    fp16: bool = False
    max_batch: int = 16
    max_masks: int | None = None  # default: 2 K, FD-CAM's switch-on and switch-off masks
    max_targets: int = 5
    workspace_gib: float = 4.0


def tensorrt_missing() -> str | None:
    """Why engines cannot be built here, or None when they can."""
    if not torch.cuda.is_available():
        return "TensorRT engines need a CUDA GPU and none is visible to torch"
    if importlib.util.find_spec("tensorrt") is None:
        return "the 'tensorrt' package is not installed (pip install 'fdpipe[tensorrt]')"
    return None


def _profile_shapes(
    name: str, manifest: dict[str, object], options: EngineOptions, max_masks: int
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) shape of every input of graph ``name``."""
    low, mid, high = 1, max(1, options.max_batch // 2), options.max_batch

    def batched(shape: list[int]) -> tuple[tuple[int, ...], ...]:
        return tuple((b, *shape) for b in (low, mid, high))

    if name == "backbone":
        return {"images": batched(manifest["input_shape"])}
    channels = manifest["activation_shape"][0]
    shapes = {
        "activations": batched(manifest["activation_shape"]),
        "masks": ((low, 1, channels), (mid, max_masks, channels), (high, max_masks, channels)),
        "classes": ((low, 1), (mid, 1), (high, options.max_targets)),
    }
    inputs = manifest["files"][f"{name}.onnx"]["inputs"]
    for i, shape in enumerate(manifest["extra_shapes"]):
        if f"extra_{i}" in inputs:
            shapes[f"extra_{i}"] = batched(shape)
    return {k: v for k, v in shapes.items() if k in inputs}


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    profile: dict[str, tuple[tuple[int, ...], ...]],
    options: EngineOptions,
) -> None:
    import tensorrt as trt  # optional extra

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * 2**30))
    if options.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    optimisation = builder.create_optimization_profile()
    for name, (low, mid, high) in profile.items():
        optimisation.set_shape(name, low, mid, high)
    config.add_optimization_profile(optimisation)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build an engine from {onnx_path.name}")
    engine_path.write_bytes(memoryview(serialized))


def build_engines(
    directory: Path, manifest: dict[str, object], options: EngineOptions
) -> dict[str, object]:
    """Build every engine next to its ONNX graph; returns the manifest's ``tensorrt`` entry."""
    import tensorrt as trt

    max_masks = options.max_masks or 2 * manifest["activation_shape"][0]
    profiles = {}
    for name in ENGINES:
        profile = _profile_shapes(name, manifest, options, max_masks)
        log.info(
            "building TensorRT engine %s.engine (%s)", name, "fp16" if options.fp16 else "fp32"
        )
        build_engine(directory / f"{name}.onnx", directory / f"{name}.engine", profile, options)
        profiles[f"{name}.engine"] = {k: [list(s) for s in v] for k, v in profile.items()}
    return {
        "version": trt.__version__,
        "device": torch.cuda.get_device_name(),
        "precision": "fp16" if options.fp16 else "fp32",
        "profiles": profiles,
        "options": asdict(options) | {"max_masks": max_masks},
    }


__all__ = ["ENGINES", "EngineOptions", "build_engine", "build_engines", "tensorrt_missing"]
