"""Exported graphs as callables on torch tensors: ONNX Runtime sessions and TensorRT engines.

``OnnxRunner`` and ``TensorRTRunner`` map input tensors to output tensors; ``RunnerBackbone``
puts one behind the ``SplitNetwork`` backbone interface, and ``RunnerMaskedHead`` behind the
``MaskedHeadScorer`` one (``ChannelsLastBackbone`` is the torch backbone in oneDNN's fast
layout). Gradients never go through them: the head stays a torch module.
TensorRT is imported only when an engine is loaded (it is an optional extra and needs CUDA).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort
import torch
from fdpipe.export.onnx import ArtifactMismatch
from fdpipe.kernels.masked_head import MaskedHeadScorer
from torch import Tensor, nn


class Runner(Protocol):
    name: str
    input_names: list[str]

    def __call__(self, *inputs: Tensor) -> list[Tensor]: ...


def onnx_providers() -> list[str]:
    """CUDA first where both ONNX Runtime and torch see a GPU, the CPU provider always."""
    cuda = "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available()
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]


class OnnxRunner:
    """An ONNX Runtime session; inputs and outputs are torch tensors on the caller's device.

    The session is created on first use, so a graph that is never run is never loaded.
    """

    def __init__(
        self, path: Path, providers: Sequence[str] | None = None, threads: int | None = None
    ) -> None:
        self.path = Path(path)
        self.providers = list(providers or onnx_providers())
        self.threads = threads or torch.get_num_threads()  # as many as torch uses
        self.name = f"onnxruntime({self.providers[0].removesuffix('ExecutionProvider')})"

    @cached_property
    def session(self) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle threads sleep instead of spinning: torch runs between calls on the same cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            return ort.InferenceSession(str(self.path), options, providers=self.providers)
        except Exception as exc:  # ONNX Runtime raises its own types: all mean a bad graph here
            raise ArtifactMismatch(
                f"{self.path} cannot be loaded as an ONNX graph: {exc}"
            ) from None

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    def __call__(self, *inputs: Tensor) -> list[Tensor]:
        device = inputs[0].device
        feed = {
            name: np.ascontiguousarray(t.detach().cpu().numpy())
            for name, t in zip(self.input_names, inputs, strict=True)
        }
        return [torch.from_numpy(out).to(device) for out in self.session.run(None, feed)]


class TensorRTRunner:
    """A serialized TensorRT 10 engine run on torch CUDA buffers (one optimisation profile)."""

    def __init__(self, path: Path) -> None:
        import tensorrt as trt  # optional extra: imported only when an engine is used

        self._trt = trt
        logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not load {path} (built by another version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) != mode]
        self.max_batch = self.profile_max(self.input_names[0])[0]
        self.name = "tensorrt"

    def profile_max(self, name: str) -> tuple[int, ...]:
        """Largest shape of input ``name`` that the engine's optimisation profile accepts."""
        return tuple(self.engine.get_tensor_profile_shape(name, 0)[2])

    def _dtype(self, name: str) -> torch.dtype:
        trt = self._trt
        kinds = {
            trt.DataType.FLOAT: torch.float32,
            trt.DataType.HALF: torch.float16,
            trt.DataType.INT32: torch.int32,
            trt.DataType.INT64: torch.int64,
            trt.DataType.BOOL: torch.bool,
        }
        return kinds[self.engine.get_tensor_dtype(name)]

    def __call__(self, *inputs: Tensor) -> list[Tensor]:
        if inputs[0].shape[0] <= self.max_batch:
            return self._run(*inputs)
        chunks = zip(*(t.split(self.max_batch) for t in inputs), strict=True)
        parts = [self._run(*chunk) for chunk in chunks]
        return [torch.cat(outs) for outs in zip(*parts, strict=True)]

    def _run(self, *inputs: Tensor) -> list[Tensor]:
        device = inputs[0].device
        stream = torch.cuda.current_stream()
        staged = []  # keeps the CUDA copies alive until the engine has run
        for name, tensor in zip(self.input_names, inputs, strict=True):
            buffer = tensor.detach().to("cuda", self._dtype(name)).contiguous()
            staged.append(buffer)
            self.context.set_input_shape(name, tuple(buffer.shape))
            self.context.set_tensor_address(name, buffer.data_ptr())
        outputs = []
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            buffer = torch.empty(shape, dtype=self._dtype(name), device="cuda")
            outputs.append(buffer)
            self.context.set_tensor_address(name, buffer.data_ptr())
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return [out.to(device) for out in outputs]  # ordered after the engine on this stream


class RunnerBackbone(nn.Module):
    """The backbone of a ``SplitNetwork`` served by a runner: images -> (activations, *extras)."""

    def __init__(self, runner: Runner) -> None:
        super().__init__()
        self.runner = runner

    def forward(self, images: Tensor) -> Tensor | tuple[Tensor, ...]:
        outputs = self.runner(images)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


class ChannelsLastBackbone(nn.Module):
    """A torch backbone run in channels-last layout, oneDNN's fast path for CPU convolutions.

    A copy: the model's own modules keep their layout. Outputs come back contiguous (NCHW);
    they equal the plain backbone's to float rounding, as another runtime's would.
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = copy.deepcopy(backbone).to(memory_format=torch.channels_last)
        self.name = "torch(channels-last)"

    def forward(self, images: Tensor) -> Tensor | tuple[Tensor, ...]:
        outputs = self.backbone(images.contiguous(memory_format=torch.channels_last))
        if isinstance(outputs, Tensor):
            return outputs.contiguous()
        return tuple(out.contiguous() for out in outputs)


class RunnerMaskedHead:
    """A ``MaskedHeadScorer`` over exported masked-head graphs (logits and probabilities).

    ``chunk`` bounds the masks per call for explicit-masking graphs (and a TensorRT profile's
    maximum); the factorised graphs take all masks at once. Negative mask values, for which
    the factorisation does not hold, go to ``fallback``.
    """

    def __init__(
        self,
        logits: Runner,
        probabilities: Runner,
        *,
        fallback: MaskedHeadScorer,
        chunks: tuple[int | None, int | None] = (None, None),
    ) -> None:
        self.runners = {False: logits, True: probabilities}
        self.chunks = {False: chunks[0], True: chunks[1]}
        self.fallback = fallback
        self.name = f"{logits.name}-masked-head"

    @torch.no_grad()
    def __call__(
        self,
        activations: Tensor,
        masks: Tensor,
        classes: Tensor,
        *,
        extras: tuple[Tensor, ...] = (),
        probabilities: bool = False,
    ) -> Tensor:
        runner = self.runners[probabilities]
        if bool((masks < 0).any()):
            return self.fallback(
                activations, masks, classes, extras=extras, probabilities=probabilities
            )
        inputs = (activations, masks, classes, *extras)[: len(runner.input_names)]
        chunk = self.chunks[probabilities] or masks.shape[1]
        parts = [runner(inputs[0], part, *inputs[2:])[0] for part in masks.split(chunk, dim=1)]
        return torch.cat(parts, dim=2).to(activations.dtype)


__all__ = [
    "ChannelsLastBackbone",
    "OnnxRunner",
    "Runner",
    "RunnerBackbone",
    "RunnerMaskedHead",
    "TensorRTRunner",
    "onnx_providers",
]
