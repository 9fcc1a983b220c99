"""Which engine runs the backbone and the masked-head scores on this machine.

``torch`` needs nothing; ``onnxruntime`` and ``tensorrt`` run the graphs of an ``fdpipe export``
directory (``artifacts``), which must have been exported from the same model, weights and layer.
``auto`` takes TensorRT where a CUDA GPU, the ``tensorrt`` package and engines are present, ONNX
Runtime's CUDA provider on other GPU machines, and on a CPU times torch (also in channels-last
layout for the backbone) against ONNX Runtime for the backbone and for the masked head
separately and keeps the fastest of each. The head itself always stays a torch module:
gradients come from autograd through the head only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from fdpipe.export.models import LoadedModel, ModelError
from fdpipe.export.onnx import artifact, load_manifest
from fdpipe.export.runners import (
    ChannelsLastBackbone,
    OnnxRunner,
    Runner,
    RunnerBackbone,
    RunnerMaskedHead,
    TensorRTRunner,
    onnx_providers,
)
from fdpipe.export.split import split_at
from fdpipe.export.tensorrt import tensorrt_missing
from fdpipe.kernels import ExplicitMaskedHead, MaskedHeadScorer, SplitNetwork
from fdpipe.kernels.factorised_head import FactorisedMaskedHead
from torch import nn

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "onnxruntime", "tensorrt")
# Not a user choice: torch with the plain masked-head loop, the reference benchmarks compare with.
REFERENCE_RUNTIME = "torch-explicit"
EXPLICIT_CHUNK = 128  # masks per call for explicit-masking graphs (the authors' batch)


class BackendError(ModelError):
    """A runtime that cannot run here, with what is missing."""


@dataclass
class Backend:
    network: SplitNetwork  # backbone may be ONNX Runtime-backed; the head stays torch (autograd)
    scorer: MaskedHeadScorer  # fastest exact scorer available
    description: str


def _runners(
    kind: str, directory: Path, manifest: dict[str, object]
) -> tuple[Runner, Runner, Runner]:
    """Backbone, logit-scores and probability-scores runners of one kind."""
    if kind == "tensorrt":
        missing = tensorrt_missing()
        if missing:
            raise BackendError(f"--runtime tensorrt: {missing}")
        if "tensorrt" not in manifest:
            raise BackendError(f"{directory} has no TensorRT engines: `fdpipe export --trt`")
        names = ("backbone.engine", "masked_head.engine", "masked_head_probabilities.engine")
        return tuple(TensorRTRunner(artifact(directory, manifest, n)) for n in names)
    names = ("backbone.onnx", "masked_head.onnx", "masked_head_probabilities.onnx")
    return tuple(OnnxRunner(artifact(directory, manifest, n)) for n in names)


def _engine_scorer(
    runners: tuple[Runner, Runner, Runner], manifest: dict[str, object], fallback: MaskedHeadScorer
) -> RunnerMaskedHead:
    chunks = []
    for runner, graph in zip(
        runners[1:], ("masked_head", "masked_head_probabilities"), strict=True
    ):
        chunk = None if manifest["masked_head"][graph] == "factorised" else EXPLICIT_CHUNK
        if isinstance(runner, TensorRTRunner):
            chunk = min(chunk or 1 << 30, runner.profile_max("masks")[1])
        chunks.append(chunk)
    return RunnerMaskedHead(runners[1], runners[2], fallback=fallback, chunks=tuple(chunks))


def _best_seconds(call: Callable[[], object], repeats: int = 3) -> float:
    """Fastest of a few runs after a warm-up: the least disturbed by other processes."""
    call()  # warm-up: first calls allocate and pick kernels
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def _faster(name: str, candidates: dict[str, Callable[[], object]]) -> str:
    seconds = {label: _best_seconds(call) for label, call in candidates.items()}
    log.info("%s: %s", name, ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in seconds.items()))
    return min(seconds, key=seconds.__getitem__)


def _calibrate(
    model: LoadedModel,
    torch_network: SplitNetwork,
    torch_scorer: MaskedHeadScorer,
    onnx: tuple[Runner, Runner, Runner],
    manifest: dict[str, object],
) -> tuple[nn.Module, MaskedHeadScorer]:
    """Per component, the fastest engine on one image and on FD-CAM's 2K masks."""
    images = torch.randn(1, 3, *model.input_size)
    backbones = {
        "torch": torch_network.backbone,
        "torch(channels-last)": ChannelsLastBackbone(torch_network.backbone),
        "onnxruntime": RunnerBackbone(onnx[0]),
    }
    with torch.no_grad():
        backbone = _faster("backbone", {k: partial(b, images) for k, b in backbones.items()})
        activations, extras = torch_network.features(images)
    channels = activations.shape[1]
    masks = (torch.rand(1, 2 * channels, channels) < 0.5).to(activations.dtype)
    classes = torch.zeros(1, 1, dtype=torch.long)
    onnx_scorer = _engine_scorer(onnx, manifest, fallback=torch_scorer)
    scorers = {"torch": torch_scorer, "onnxruntime": onnx_scorer}
    inputs = (activations, masks, classes)
    scorer = _faster(
        "masked head", {k: partial(s, *inputs, extras=extras) for k, s in scorers.items()}
    )
    return backbones[backbone], scorers[scorer]


def _name(backbone: nn.Module) -> str:
    if isinstance(backbone, RunnerBackbone):
        return backbone.runner.name
    return getattr(backbone, "name", "torch")


def select_backend(
    model: LoadedModel, *, artifacts: Path | None = None, runtime: str = "auto"
) -> Backend:
    """The network and scorer to explain ``model`` with; ``runtime`` forces an engine.

    Called once per model by ``fdpipe.api.backend_for``: the one construction site of backends.
    """
    if runtime not in (*RUNTIMES, REFERENCE_RUNTIME):
        raise BackendError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
    if torch.cuda.is_available():
        # The torch head (gradients, scores) runs where the runners' inputs and outputs live.
        model.module.to("cuda")
    network = split_at(model.module, model.layer)
    if runtime == REFERENCE_RUNTIME:
        scorer = ExplicitMaskedHead(network.head, chunk=EXPLICIT_CHUNK)
        return Backend(network, scorer, "backbone=torch head-scores=explicit")
    torch_scorer = FactorisedMaskedHead(network.head)
    manifest = load_manifest(artifacts, model) if artifacts is not None else None
    if runtime in ("onnxruntime", "tensorrt") and manifest is None:
        raise BackendError(f"--runtime {runtime} runs exported graphs: give --artifacts DIR")
    if manifest is None or runtime == "torch":
        backbone, scorer = network.backbone, torch_scorer
    elif runtime == "tensorrt" or (
        runtime == "auto" and "tensorrt" in manifest and tensorrt_missing() is None
    ):
        runners = _runners("tensorrt", artifacts, manifest)
        backbone, scorer = (
            RunnerBackbone(runners[0]),
            _engine_scorer(runners, manifest, torch_scorer),
        )
    else:
        runners = _runners("onnxruntime", artifacts, manifest)
        if runtime == "onnxruntime" or "CUDAExecutionProvider" in onnx_providers():
            backbone = RunnerBackbone(runners[0])
            scorer = _engine_scorer(runners, manifest, torch_scorer)
        else:
            backbone, scorer = _calibrate(model, network, torch_scorer, runners, manifest)
    backend = Backend(
        SplitNetwork(backbone, network.head, network.layer),
        scorer,
        f"backbone={_name(backbone)} head-scores={scorer.name} gradients=torch-autograd(head)",
    )
    log.info("runtime: %s", backend.description)
    return backend


__all__ = ["REFERENCE_RUNTIME", "RUNTIMES", "Backend", "BackendError", "select_backend"]
