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
from fdpipe.errors import FdpipeError
from fdpipe.export.onnx import ArtifactMismatch
from fdpipe.kernels.budget import MASK_GRANULE, MemoryBudget
from fdpipe.kernels.masked_head import MaskedHeadScorer
from torch import Tensor, nn


class Runner(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def input_names(self) -> list[str]: ...

    def __call__(self, *inputs: Tensor) -> list[Tensor]: ...


class RunnerError(FdpipeError, RuntimeError):
    """A graph or engine that cannot run as asked (wrong provider, shape outside a profile)."""

    exit_code = 1  # a failure while running; at set-up it is a BackendError (exit 2)


def onnx_providers() -> list[str]:
    """CUDA first where both ONNX Runtime and torch see a GPU, the CPU provider always."""
    cuda = "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available()
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]


ONNX_TO_TORCH = {
    "tensor(float)": torch.float32,
    "tensor(float16)": torch.float16,
    "tensor(int64)": torch.int64,
    "tensor(int32)": torch.int32,
    "tensor(bool)": torch.bool,
}
TORCH_TO_NUMPY = {
    torch.float32: np.float32,
    torch.float16: np.float16,
    torch.int64: np.int64,
    torch.int32: np.int32,
    torch.bool: np.bool_,
}


def output_shapes(
    inputs: dict[str, tuple[int, ...]],
    input_dims: dict[str, list[int | str | None]],
    output_dims: dict[str, list[int | str | None]],
) -> dict[str, tuple[int, ...]] | None:
    """Concrete output shapes from the graph's named dynamic dims ("batch", "masks", ...).

    None when an output has a dim no input names (ONNX Runtime then allocates it).
    """
    sizes: dict[str, int] = {}
    for name, dims in input_dims.items():
        for dim, size in zip(dims, inputs[name], strict=True):
            if isinstance(dim, str):
                sizes[dim] = size
    shapes = {}
    for name, dims in output_dims.items():
        if any((isinstance(d, str) and d not in sizes) or d is None for d in dims):
            return None
        shapes[name] = tuple(sizes[d] if isinstance(d, str) else int(d or 0) for d in dims)
    return shapes


class OnnxRunner:
    """An ONNX Runtime session; inputs and outputs are torch tensors on the caller's device.

    The session is created on first use, so a graph that is never run is never loaded, and is
    refused (``RunnerError``) when ONNX Runtime did not register the first provider asked for:
    a CUDA provider whose libraries fail to load would otherwise run on the CPU, labelled CUDA.
    On CUDA the session runs on its own stream with TF32 off (FP32 means IEEE FP32; VGG16 logits
    move by ~2e-4 relative with TF32, past the export's 1e-4 parity bar). Inputs and outputs are
    torch buffers bound in place (IO binding) on CUDA and on the CPU alike: the same code runs in
    the CPU tests.
    """

    def __init__(
        self, path: Path, providers: Sequence[str] | None = None, threads: int | None = None
    ) -> None:
        self.path = Path(path)
        self.providers = list(providers or onnx_providers())
        self.threads = threads or torch.get_num_threads()  # as many as torch uses
        self.cuda = self.providers[0] == "CUDAExecutionProvider"
        self.name = f"onnxruntime({self.providers[0].removesuffix('ExecutionProvider')})"

    @cached_property
    def stream(self) -> torch.cuda.Stream:
        """The session's own CUDA stream (ONNX Runtime's ``user_compute_stream``)."""
        return torch.cuda.Stream()

    def _provider_options(self) -> list[dict[str, str]]:
        if not self.cuda:
            return [{} for _ in self.providers]
        cuda = {
            "device_id": str(torch.cuda.current_device()),
            "use_tf32": "0",
            "has_user_compute_stream": "1",
            "user_compute_stream": str(self.stream.cuda_stream),
        }
        return [cuda if p == "CUDAExecutionProvider" else {} for p in self.providers]

    @cached_property
    def session(self) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle threads sleep instead of spinning: torch runs between calls on the same cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(
                str(self.path),
                options,
                providers=self.providers,
                provider_options=self._provider_options(),
            )
        except Exception as exc:  # ONNX Runtime raises its own types: all mean a bad graph here
            raise ArtifactMismatch(
                f"{self.path} cannot be loaded as an ONNX graph: {exc}"
            ) from None
        if self.providers[0] not in session.get_providers():
            raise RunnerError(
                f"ONNX Runtime could not use {self.providers[0]} for {self.path.name} "
                f"(in use: {', '.join(session.get_providers())}); check the onnxruntime-gpu, "
                "CUDA and cuDNN installation, or choose --runtime torch"
            )
        return session

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    @cached_property
    def run_options(self) -> ort.RunOptions:
        """No host wait at the end of a run: torch's stream waits for the session's instead."""
        options = ort.RunOptions()
        options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        return options

    def __call__(self, *inputs: Tensor) -> list[Tensor]:
        """IO binding on torch buffers of the session's device (CUDA or the CPU): inputs are
        read and outputs written in place, with no copy through numpy or host memory; on CUDA
        ordered on streams (torch's, then the session's, then torch's), with no host wait."""
        session, device = self.session, inputs[0].device
        kind = "cuda" if self.cuda else "cpu"
        index = torch.cuda.current_device() if self.cuda else 0
        buffers = [t.detach().to(torch.device(kind, index)).contiguous() for t in inputs]
        binding = session.io_binding()
        for name, buffer in zip(self.input_names, buffers, strict=True):
            binding.bind_input(
                name, kind, index, TORCH_TO_NUMPY[buffer.dtype], tuple(buffer.shape),
                buffer.data_ptr(),
            )  # fmt: skip
        shapes = output_shapes(
            {n: tuple(b.shape) for n, b in zip(self.input_names, buffers, strict=True)},
            {i.name: i.shape for i in session.get_inputs()},
            {o.name: o.shape for o in session.get_outputs()},
        )
        outputs = []
        for output in session.get_outputs():
            if shapes is None:  # sizes known only after the run: ONNX Runtime allocates
                binding.bind_output(output.name, kind, index)
                continue
            dtype = ONNX_TO_TORCH[output.type]
            out = torch.empty(shapes[output.name], dtype=dtype, device=buffers[0].device)
            binding.bind_output(
                output.name, kind, index, TORCH_TO_NUMPY[dtype], tuple(out.shape),
                out.data_ptr(),
            )  # fmt: skip
            outputs.append(out)
        if self.cuda:
            self.stream.wait_stream(torch.cuda.current_stream())  # inputs written on torch's
        session.run_with_iobinding(binding, self.run_options)
        if shapes is None:  # ONNX Runtime's own buffers, shared with torch through DLPack
            outputs = [torch.from_dlpack(value) for value in binding.get_outputs()]
        if self.cuda:
            torch.cuda.current_stream().wait_stream(self.stream)  # later torch work sees them
            for buffer in (*buffers, *outputs) if shapes is not None else buffers:
                buffer.record_stream(self.stream)  # not reused before the session is done
        return [out.to(device) for out in outputs]


def aligned(tensor: Tensor, alignment: int = 256) -> Tensor:
    """``tensor``, copied when its address breaks TensorRT's I/O alignment (256 bytes).

    A slice of a batch (``split``) starts inside its parent's storage: the engine would read
    from a misaligned address, which TensorRT does not guarantee to handle.
    """
    if tensor.data_ptr() % alignment == 0:
        return tensor
    # Over-allocate and start at the first aligned element (CUDA's allocator aligns to 512
    # bytes already; this holds for any allocator).
    spare = alignment // tensor.element_size()
    storage = torch.empty(tensor.numel() + spare, dtype=tensor.dtype, device=tensor.device)
    offset = (-storage.data_ptr() % alignment) // tensor.element_size()
    copy = storage[offset : offset + tensor.numel()].view(tensor.shape)
    return copy.copy_(tensor)


class TensorRTRunner:
    """A serialized TensorRT 10/11 engine run on torch CUDA buffers (one optimisation profile).

    Runs on its own CUDA stream, ordered after torch's current stream and before its later work.
    """

    def __init__(self, path: Path) -> None:
        import tensorrt as trt  # optional extra: imported only when an engine is used

        self._trt = trt
        logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise RunnerError(f"TensorRT could not load {path} (built by another version or GPU?)")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise RunnerError(f"TensorRT could not create an execution context for {path}")
        self.stream = torch.cuda.Stream()
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
        staged = []  # keeps the CUDA copies alive until the engine has run
        for name, tensor in zip(self.input_names, inputs, strict=True):
            buffer = aligned(tensor.detach().to("cuda", self._dtype(name)).contiguous())
            staged.append(buffer)
            if not self.context.set_input_shape(name, tuple(buffer.shape)):
                raise RunnerError(
                    f"TensorRT refused {name} of shape {tuple(buffer.shape)}: the engine's "
                    f"profile allows up to {self.profile_max(name)}"
                )
            self._bind(name, buffer)
        outputs = []
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            buffer = torch.empty(shape, dtype=self._dtype(name), device="cuda")
            outputs.append(buffer)
            self._bind(name, buffer)
        self.stream.wait_stream(torch.cuda.current_stream())  # inputs staged on torch's stream
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RunnerError("TensorRT execution failed")
        torch.cuda.current_stream().wait_stream(self.stream)  # later torch work sees outputs
        for buffer in (*staged, *outputs):
            buffer.record_stream(self.stream)  # not reused before the engine is done with it
        return [out.to(device, torch.float32) for out in outputs]

    def _bind(self, name: str, buffer: Tensor) -> None:
        if not self.context.set_tensor_address(name, buffer.data_ptr()):
            raise RunnerError(f"TensorRT refused the address of {name}")


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
    maximum); the factorised graphs take all masks at once. ``max_targets`` bounds the classes
    per call (a TensorRT profile's maximum). Negative mask values, for which the factorisation
    does not hold, go to ``fallback``.
    """

    def __init__(
        self,
        logits: Runner,
        probabilities: Runner,
        *,
        fallback: MaskedHeadScorer,
        chunks: tuple[int | None, int | None] = (None, None),
        max_targets: tuple[int | None, int | None] = (None, None),
    ) -> None:
        self.runners = {False: logits, True: probabilities}
        self.chunks = {False: chunks[0], True: chunks[1]}
        self.max_targets = {False: max_targets[0], True: max_targets[1]}
        self.fallback = fallback
        self.name = f"{logits.name}-masked-head"
        self.ran: set[str] = set()

    @torch.no_grad()
    def __call__(
        self,
        activations: Tensor,
        masks: Tensor,
        classes: Tensor,
        *,
        extras: tuple[Tensor, ...] = (),
        probabilities: bool = False,
        budget: MemoryBudget | None = None,
    ) -> Tensor:
        runner = self.runners[probabilities]
        if bool((masks < 0).any()):
            scores = self.fallback(
                activations, masks, classes, extras=extras, probabilities=probabilities,
                budget=budget,
            )  # fmt: skip
            self.ran |= self.fallback.ran
            return scores
        self.ran.add(self.name)
        inputs = (activations, masks, classes, *extras)[: len(runner.input_names)]
        chunk = self.chunks[probabilities] or masks.shape[1]
        if budget is not None:  # the graph's own working set is unknown: three activation copies
            row = 3 * activations.numel() * activations.element_size()
            chunk = min(chunk, budget.rows("masked-head", row, masks.shape[1], MASK_GRANULE))
        targets = self.max_targets[probabilities] or classes.shape[1]
        rows = [
            torch.cat(
                [runner(inputs[0], part, wanted, *inputs[3:])[0] for part in masks.split(chunk, 1)],
                dim=2,
            )
            for wanted in classes.split(targets, dim=1)
        ]
        return torch.cat(rows, dim=1).to(activations.dtype)


__all__ = [
    "ONNX_TO_TORCH",
    "ChannelsLastBackbone",
    "OnnxRunner",
    "Runner",
    "RunnerBackbone",
    "RunnerError",
    "RunnerMaskedHead",
    "TensorRTRunner",
    "aligned",
    "onnx_providers",
    "output_shapes",
]
