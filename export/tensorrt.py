"""Serialized TensorRT engines from the exported ONNX graphs (``fdpipe export --trt``).

Needs a CUDA GPU and the optional ``tensorrt`` package, tested range 10.x-11.x (``<12``);
``tensorrt_missing`` says why not before anything is written. Networks are built strongly typed:
FP32 engines from the FP32 graphs with TF32 off (IEEE FP32, within the export's 1e-4 parity
tolerance), FP16 engines from the export's FP16 graphs (``*.fp16.onnx``: FP16 compute, FP32 inputs
and outputs). TensorRT 11 removed ``BuilderFlag.FP16`` (weak typing); a strongly typed FP16 graph
is what both 10.x and 11.x build the same way.

One optimisation profile per engine, sized by what the runners send: images in batches of
1..``max_batch``; the factorised masked-head graphs take every mask at once (2K by default,
FD-CAM's switch-on and switch-off masks), the explicit-masking graphs ``EXPLICIT_CHUNK`` masks per
call, with the batch lowered where a masked batch would pass TensorRT's 2^31-1 elements per tensor;
up to ``max_targets`` classes per call (the scorer splits more).
"""

from __future__ import annotations

import importlib.util
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from fdpipe.export.onnx import Manifest

log = logging.getLogger(__name__)

ENGINES = ("backbone", "masked_head", "masked_head_probabilities")
TENSORRT_PRECISIONS = ("fp32", "fp16")  # what an engine can be built in
TESTED_MAJORS = (10, 11)  # pyproject pins tensorrt>=10,<12
EXPLICIT_CHUNK = 128  # masks per call for explicit-masking graphs (the authors' batch)
MAX_ELEMENTS = 2**31 - 1  # TensorRT's limit on the elements of one tensor


@dataclass(frozen=True)
class EngineOptions:
    precision: str = "fp32"
    max_batch: int = 16
    max_masks: int | None = None  # default: 2 K, FD-CAM's switch-on and switch-off masks
    max_targets: int = 5
    workspace_gib: float = 4.0


def tensorrt_version() -> str:
    import tensorrt as trt  # optional extra: imported only when engines are used

    return str(trt.__version__)


def unsupported_version(version: str) -> str | None:
    """Why TensorRT ``version`` is refused, or None inside the tested range."""
    try:
        major = int(version.split(".")[0])
    except ValueError:
        return f"cannot read the TensorRT version {version!r}"
    if major not in TESTED_MAJORS:
        return (
            f"TensorRT {version} is outside the tested range 10.x-11.x: "
            "pip install 'tensorrt>=10,<12'"
        )
    return None


def tensorrt_missing() -> str | None:
    """Why engines cannot be built or run here, or None when they can."""
    if not torch.cuda.is_available():
        return "TensorRT engines need a CUDA GPU and none is visible to torch"
    if importlib.util.find_spec("tensorrt") is None:
        return "the 'tensorrt' package is not installed (pip install 'fdpipe[tensorrt]')"
    return unsupported_version(tensorrt_version())


def engine_mismatch(entry: dict[str, object]) -> str | None:
    """Why engines described by a manifest's ``tensorrt`` entry cannot run here, or None.

    A serialized engine runs only with the TensorRT version and the GPU model it was built by.
    """
    here = {"version": tensorrt_version(), "device": torch.cuda.get_device_name()}
    wrong = [f"{k} {entry.get(k)!r}, here {v!r}" for k, v in here.items() if entry.get(k) != v]
    if wrong:
        return f"the engines were built for another TensorRT or GPU ({'; '.join(wrong)})"
    return None


def _explicit_batch(options: EngineOptions, manifest: Manifest) -> int:
    """Largest batch whose masked activations and per-mask logits planes fit one tensor."""
    channels, *spatial = manifest.activation_shape
    per_mask = max(channels, manifest.num_classes) * math.prod(spatial)
    limit = MAX_ELEMENTS // (EXPLICIT_CHUNK * per_mask)
    if limit < 1:
        raise ValueError(f"{EXPLICIT_CHUNK} masked activations exceed TensorRT's tensor limit")
    return min(options.max_batch, limit)


Profile = dict[str, tuple[tuple[int, ...], ...]]  # input -> (min, opt, max) shapes


def profile_shapes(name: str, manifest: Manifest, options: EngineOptions) -> Profile:
    """(min, opt, max) shape of every input of graph ``name``, sized by what the runner sends."""
    high = options.max_batch
    masks = options.max_masks or 2 * manifest.activation_shape[0]
    if name != "backbone" and manifest.masked_head[name] == "explicit":
        high, masks = _explicit_batch(options, manifest), min(masks, EXPLICIT_CHUNK)
    low, mid = 1, max(1, high // 2)

    def batched(shape: list[int]) -> tuple[tuple[int, ...], ...]:
        return tuple((b, *shape) for b in (low, mid, high))

    if name == "backbone":
        return {"images": batched(manifest.input_shape)}
    channels = manifest.activation_shape[0]
    shapes = {
        "activations": batched(manifest.activation_shape),
        "masks": ((low, 1, channels), (mid, masks, channels), (high, masks, channels)),
        "classes": ((low, 1), (mid, 1), (high, options.max_targets)),
    }
    inputs = manifest.files[f"{name}.onnx"]["inputs"]
    for i, shape in enumerate(manifest.extra_shapes):
        if f"extra_{i}" in inputs:
            shapes[f"extra_{i}"] = batched(shape)
    return {k: v for k, v in shapes.items() if k in inputs}


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    profile: Profile,
    options: EngineOptions,
) -> None:
    """Build one engine from ``onnx_path``: strongly typed, so precision is the graph's own."""
    import tensorrt as trt  # optional extra

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # 10.x: opt in to strong typing (FP16 then comes from the FP16 graph, not BuilderFlag.FP16,
    # which 11.x removed); 11.x: always strongly typed, the flag may be gone.
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * 2**30))
    if hasattr(trt.BuilderFlag, "TF32"):
        # TF32 (on by default) moves VGG16 logits by ~2e-4 relative, past the 1e-4 parity bar:
        # FP32 means IEEE FP32; reduced precision is asked for with --precision fp16.
        config.clear_flag(trt.BuilderFlag.TF32)
    optimisation = builder.create_optimization_profile()
    for name, (low, mid, high) in profile.items():
        optimisation.set_shape(name, low, mid, high)
    config.add_optimization_profile(optimisation)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build an engine from {onnx_path.name}")
    engine_path.write_bytes(memoryview(serialized))


def graph_file(name: str, precision: str) -> str:
    """The ONNX graph an engine of ``precision`` is built from."""
    return f"{name}.onnx" if precision == "fp32" else f"{name}.{precision}.onnx"


def build_engines(directory: Path, manifest: Manifest, options: EngineOptions) -> dict[str, object]:
    """Build every engine next to its ONNX graph; returns the manifest's ``tensorrt`` entry."""
    if options.precision not in TENSORRT_PRECISIONS:
        raise ValueError(f"TensorRT engines are built in {' or '.join(TENSORRT_PRECISIONS)}")
    profiles = {}
    for name in ENGINES:
        profile = profile_shapes(name, manifest, options)
        log.info("building TensorRT engine %s.engine (%s)", name, options.precision)
        source = directory / graph_file(name, options.precision)
        build_engine(source, directory / f"{name}.engine", profile, options)
        profiles[f"{name}.engine"] = {k: [list(s) for s in v] for k, v in profile.items()}
    return {
        "version": tensorrt_version(),
        "device": torch.cuda.get_device_name(),
        "precision": options.precision,
        "tf32": False,
        "profiles": profiles,
        "options": asdict(options),
    }


__all__ = [
    "ENGINES",
    "EXPLICIT_CHUNK",
    "TENSORRT_PRECISIONS",
    "EngineOptions",
    "build_engine",
    "build_engines",
    "engine_mismatch",
    "graph_file",
    "profile_shapes",
    "tensorrt_missing",
    "unsupported_version",
]
