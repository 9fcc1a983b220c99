"""Which engine runs the backbone and the masked-head scores on this machine.

``torch`` needs nothing; ``onnxruntime`` and ``tensorrt`` run the graphs of an ``fdpipe export``
directory (``artifacts``), which must have been exported from the same model, weights and layer.
``auto`` takes TensorRT where a CUDA GPU, the ``tensorrt`` package and engines built by this
TensorRT on this GPU model are present, ONNX Runtime's CUDA provider on other GPU machines (when
it really loads), and on a CPU times torch (also in channels-last layout for the backbone)
against ONNX Runtime for the backbone and for the masked head separately and keeps the fastest of
each. Whatever ``auto`` cannot use it logs and passes over; a forced runtime that cannot run is
refused. The head itself always stays a torch module: gradients come from autograd through it.

``precision`` (``fdpipe.kernels.precision``): ``fp32`` (default), ``bf16`` (torch on CPUs with
native bf16, or CUDA), ``fp16`` (CUDA: torch autocast, ONNX Runtime on the export's FP16 graphs,
TensorRT FP16 engines), ``auto`` (``AUTO_PRECISION``: reduced precision only where the fidelity
benchmark showed FD-CAM maps at r >= 0.999 of fp32 and it is faster).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from fdpipe.export.loading import LoadedModel
from fdpipe.export.onnx import Manifest, artifact, load_manifest
from fdpipe.export.request import ModelError
from fdpipe.export.runners import (
    ChannelsLastBackbone,
    OnnxRunner,
    Runner,
    RunnerBackbone,
    RunnerError,
    RunnerMaskedHead,
    TensorRTRunner,
    onnx_providers,
)
from fdpipe.export.split import split_at
from fdpipe.export.tensorrt import EXPLICIT_CHUNK, engine_mismatch, graph_file, tensorrt_missing
from fdpipe.kernels import ExplicitMaskedHead, MaskedHeadScorer, SplitNetwork
from fdpipe.kernels.factorised_head import FactorisedMaskedHead
from fdpipe.kernels.precision import (
    DTYPES,
    PRECISION_CHOICES,
    AutocastBackbone,
    precision_unsupported,
)
from torch import nn

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "onnxruntime", "tensorrt")
# Not a user choice: torch with the plain masked-head loop, the reference benchmarks compare with.
REFERENCE_RUNTIME = "torch-explicit"
# What ``precision="auto"`` picks per device kind: reduced precision only where the fidelity
# suite (``fdpipe bench --suite fidelity``) showed FD-CAM maps at r >= 0.999 of fp32 on every
# model AND the speed suite showed it faster (README, "Precision"). CPU bf16 (AVX-512 BF16, no
# AMX, 2026-12-06): FD-CAM's maps hold and it ran at 0.49x fp32 on VGG16; it stays fp32 for
# now, as Grad-CAM and XGrad-CAM fell below the bar in bf16 (H100) and auto is per run, not
# per method. CUDA (H100, 2026-11-22): fp16 holds for every method, but end to end it was faster
# only on VGG16 (0.71-0.87x fp32) and slower on SqueezeNet (1.2-1.8x): FD-CAM on a GPU is bound
# by the CPU's share. Both stay fp32.
AUTO_PRECISION = {"cpu": "fp32", "cuda": "fp32"}


class BackendError(ModelError):
    """A runtime that cannot run here, with what is missing."""


@dataclass
class Backend:
    network: SplitNetwork  # backbone may be ONNX Runtime-backed; the head stays torch (autograd)
    scorer: MaskedHeadScorer  # fastest exact scorer available
    description: str  # the engines selected; ``ran`` says which masked-head path really ran
    precision: str = "fp32"  # as run (``auto`` resolved)

    def ran(self) -> str:
        """``description`` with the masked-head paths that scored masks so far (``none``): a
        factorised head falls back to explicit masking where its plan does not hold."""
        heads = "+".join(sorted(self.scorer.ran)) or "none"
        return " ".join(
            f"head-scores={heads}" if part.startswith("head-scores=") else part
            for part in self.description.split()
        )


def _runners(
    kind: str, directory: Path, manifest: Manifest, precision: str = "fp32"
) -> tuple[Runner, Runner, Runner]:
    """Backbone, logit-scores and probability-scores runners of one kind and precision.

    Raises ``BackendError`` with the reason when they cannot run here.
    """
    graphs = ("backbone", "masked_head", "masked_head_probabilities")
    if kind == "tensorrt":
        missing = tensorrt_missing()
        if missing:
            raise BackendError(f"--runtime tensorrt: {missing}")
        entry = manifest.tensorrt
        if not isinstance(entry, dict):
            raise BackendError(f"{directory} has no TensorRT engines: `fdpipe export --trt`")
        built = entry.get("precision", "fp32")
        if built != precision:
            raise BackendError(
                f"the engines in {directory} are {built}, not {precision}: "
                f"`fdpipe export --trt --precision {precision}`"
            )
        mismatch = engine_mismatch(entry)
        if mismatch:
            raise BackendError(f"{mismatch}: re-run `fdpipe export --trt` on this machine")
        try:
            backbone, logits, probabilities = (
                TensorRTRunner(artifact(directory, manifest, f"{g}.engine")) for g in graphs
            )
            return backbone, logits, probabilities
        except RunnerError as exc:
            raise BackendError(str(exc)) from exc
    names = [graph_file(g, precision) for g in graphs]
    if precision != "fp32" and not all(n in manifest.files for n in names):
        raise BackendError(
            f"{directory} has no {precision} graphs: `fdpipe export --precision {precision}`"
        )
    runners = [OnnxRunner(artifact(directory, manifest, n)) for n in names]
    try:
        for runner in runners:
            runner.session  # noqa: B018 - load now: a provider that fails to load is refused here
    except RunnerError as exc:
        raise BackendError(str(exc)) from exc
    return runners[0], runners[1], runners[2]


def _engine_scorer(
    runners: tuple[Runner, Runner, Runner], manifest: Manifest, fallback: MaskedHeadScorer
) -> RunnerMaskedHead:
    chunks, targets = [], []
    for runner, graph in zip(
        runners[1:], ("masked_head", "masked_head_probabilities"), strict=True
    ):
        chunk = None if manifest.masked_head[graph] == "factorised" else EXPLICIT_CHUNK
        most = None
        if isinstance(runner, TensorRTRunner):  # send only what the engine's profile accepts
            chunk = min(chunk or 1 << 30, runner.profile_max("masks")[1])
            most = runner.profile_max("classes")[1]
        chunks.append(chunk)
        targets.append(most)
    return RunnerMaskedHead(
        runners[1],
        runners[2],
        fallback=fallback,
        chunks=(chunks[0], chunks[1]),
        max_targets=(targets[0], targets[1]),
    )


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
    manifest: Manifest,
) -> tuple[nn.Module, MaskedHeadScorer]:
    """Per component, the fastest engine on one image and on FD-CAM's 2K masks."""
    images = torch.randn(1, *model.input_shape)
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
    for timed in (torch_scorer, onnx_scorer):  # the timing is no part of what a run ran
        timed.ran.clear()
    return backbones[backbone], scorers[scorer]


def _name(backbone: nn.Module) -> str:
    if isinstance(backbone, RunnerBackbone):
        return backbone.runner.name
    return getattr(backbone, "name", "torch")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``precision`` as run on ``device`` (``auto`` resolved); refused when it cannot run fast."""
    if precision not in PRECISION_CHOICES:
        raise BackendError(
            f"unknown precision {precision!r}; choose from {', '.join(PRECISION_CHOICES)}"
        )
    if precision == "auto":
        return AUTO_PRECISION[device.type]
    reason = precision_unsupported(precision, device)
    if reason:
        raise BackendError(f"--precision {precision}: {reason}")
    return precision


def select_backend(
    model: LoadedModel,
    *,
    artifacts: Path | None = None,
    runtime: str = "auto",
    precision: str = "fp32",
    device: torch.device | str | None = None,
) -> Backend:
    """The network and scorer to explain ``model`` with; ``runtime`` forces an engine.

    Called once per model by ``fdpipe.api.backend_for``: the one construction site of backends.
    """
    if runtime not in (*RUNTIMES, REFERENCE_RUNTIME):
        raise BackendError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
    # The torch head (gradients, scores) runs where the runners' inputs and outputs live.
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    precision = resolve_precision(precision, device)
    # The caller's module stays where it is (a model shared with other code): the backend runs
    # a copy of it on ``device`` when it lives elsewhere.
    module = model.module
    if next(module.parameters(), torch.empty(0, device=device)).device != device:
        module = copy.deepcopy(module).to(device)
    network = split_at(module, model.layer, model.input_shape)
    if runtime == REFERENCE_RUNTIME:
        reference = ExplicitMaskedHead(network.head, chunk=EXPLICIT_CHUNK)
        return Backend(network, reference, "backbone=torch head-scores=explicit", "fp32")
    dtype = DTYPES[precision]
    torch_backbone = (
        network.backbone if precision == "fp32" else AutocastBackbone(network.backbone, dtype)
    )
    torch_scorer = FactorisedMaskedHead(network.head, dtype=dtype)
    manifest = load_manifest(artifacts, model) if artifacts is not None else None
    if runtime in ("onnxruntime", "tensorrt") and manifest is None:
        raise BackendError(f"--runtime {runtime} runs exported graphs: give --artifacts DIR")
    if device.type == "cpu" and precision != "fp32" and runtime == "onnxruntime":
        raise BackendError(f"--precision {precision} on a CPU runs on torch: --runtime torch")
    backbone: nn.Module = torch_backbone
    scorer: MaskedHeadScorer = torch_scorer
    if manifest is None or artifacts is None or runtime == "torch":
        pass
    elif runtime == "tensorrt" or (runtime == "auto" and manifest.tensorrt is not None):
        try:
            runners = _runners("tensorrt", artifacts, manifest, precision)
            backbone = RunnerBackbone(runners[0])
            scorer = _engine_scorer(runners, manifest, torch_scorer)
        except BackendError as exc:
            if runtime == "tensorrt":
                raise
            log.warning("runtime auto: not using TensorRT (%s)", exc)
            backbone, scorer = _onnxruntime_or_torch(
                model, network, (torch_backbone, torch_scorer), artifacts, manifest, precision
            )
    else:
        backbone, scorer = _onnxruntime_or_torch(
            model, network, (torch_backbone, torch_scorer), artifacts, manifest, precision,
            forced=runtime == "onnxruntime",
        )  # fmt: skip
    backend = Backend(
        SplitNetwork(backbone, network.head, network.layer),
        scorer,
        f"backbone={_name(backbone)} head-scores={scorer.name} gradients=torch-autograd(head)",
        precision,
    )
    log.info("runtime: %s (precision %s)", backend.description, precision)
    return backend


def _onnxruntime_or_torch(
    model: LoadedModel,
    network: SplitNetwork,
    torch_parts: tuple[nn.Module, MaskedHeadScorer],
    artifacts: Path,
    manifest: Manifest,
    precision: str,
    *,
    forced: bool = False,
) -> tuple[nn.Module, MaskedHeadScorer]:
    """ONNX Runtime on a GPU; on a CPU the fastest of torch and ONNX Runtime per component."""
    torch_backbone, torch_scorer = torch_parts
    cuda_provider = "CUDAExecutionProvider" in onnx_providers()
    if precision != "fp32" and not cuda_provider:
        return torch_backbone, torch_scorer  # reduced precision on a CPU is torch's
    if network.device.type == "cuda" and not (cuda_provider or forced):
        # ONNX Runtime without its CUDA provider (the CPU package) would copy every tensor
        # through host memory to run slower than torch on the GPU.
        log.info("runtime auto: ONNX Runtime has no CUDA provider here; torch runs on the GPU")
        return torch_backbone, torch_scorer
    try:
        runners = _runners("onnxruntime", artifacts, manifest, precision)
    except BackendError as exc:
        if forced:
            raise
        log.warning("runtime auto: not using ONNX Runtime (%s)", exc)
        return torch_backbone, torch_scorer
    if forced or cuda_provider:
        return RunnerBackbone(runners[0]), _engine_scorer(runners, manifest, torch_scorer)
    return _calibrate(model, network, torch_scorer, runners, manifest)


__all__ = [
    "AUTO_PRECISION",
    "REFERENCE_RUNTIME",
    "RUNTIMES",
    "Backend",
    "BackendError",
    "resolve_precision",
    "select_backend",
]
