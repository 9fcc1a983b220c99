"""Reduced-precision compute for the backbone and the masked-head products.

``fp32`` is the reference. ``bf16`` needs native bf16 arithmetic: on CPUs the AVX-512 BF16 or
AMX-BF16 instructions (emulated bf16 is slower than fp32, so it is refused), on CUDA a GPU that
``torch.cuda.is_bf16_supported()``; ``fp16`` needs CUDA (CPUs have no fast fp16 matrix path).
Reduced precision covers the backbone (torch autocast: convolutions and matrix products in the
low type, accumulated in fp32 by oneDNN/cuBLAS; activations handed on in fp32) and the big
products of the factorised masked head (``FactorisedHead``'s ``dtype``). The target-class rows
of the last layer, the clean logits and the gradients stay fp32: FD-CAM's scores are
differences of nearby logits, which a bf16 output (8-bit mantissa) would round away.

``fp32`` means IEEE FP32 on CUDA too (``ieee_fp32``): cuDNN runs FP32 convolutions in TF32 by
default (10-bit mantissa), which moves the maps by ~1e-3 and makes an image's map depend on its
batch neighbours (a different batch size picks a different kernel). TensorRT and ONNX Runtime
CUDA run with TF32 off for the same reason (``fdpipe.export``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

PRECISION_CHOICES = ("fp32", "bf16", "fp16", "auto")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX-BF16)."""
    if cpuinfo.is_file():
        flags = set()
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
                break
        return bool(flags & {"avx512_bf16", "amx_bf16"})
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())  # other systems: ask oneDNN


# The products autocast and oneDNN/cuBLAS run in the low type with fp32 accumulation.
PRODUCTS: frozenset[Callable[..., object]] = frozenset(
    {
        F.conv2d,
        F.linear,
        torch.matmul,
        torch.Tensor.matmul,
        torch.Tensor.__matmul__,
        torch.bmm,
        torch.mm,
        torch.einsum,
    }
)


class EmulatedProducts(TorchFunctionMode):
    """Low-precision products computed as the hardware does, at fp32 speed, on any CPU.

    Inputs rounded to ``dtype``, products accumulated in fp32, the result rounded to ``dtype``:
    what native bf16 (AVX-512 BF16, AMX, tensor cores) computes up to summation order. For
    measuring the fidelity of a precision on a machine without it (``emulate``); not a run mode.
    """

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func not in PRODUCTS:
            return func(*args, **kwargs)
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)]
        if func is torch.einsum:
            tensors = [t for a in args[1:] for t in (a if isinstance(a, list | tuple) else [a])]
        autocast = torch.is_autocast_enabled("cpu")
        autocast = autocast and torch.get_autocast_dtype("cpu") == self.dtype
        if not (autocast or any(t.dtype == self.dtype for t in tensors)):
            return func(*args, **kwargs)

        def rounded(value: object) -> object:
            if isinstance(value, Tensor) and value.is_floating_point():
                return value.to(self.dtype).float()
            return value

        with torch.autocast("cpu", enabled=False):
            out = func(*tree_map(rounded, args), **tree_map(rounded, kwargs))
        return out.to(self.dtype)


_EMULATING: list[torch.dtype] = []


@contextmanager
def emulate(precision: str) -> Iterator[None]:
    """Run ``precision`` (bf16/fp16) on this CPU by ``EmulatedProducts``: fidelity suites only.

    Inside, ``precision_unsupported`` accepts the precision on the CPU.
    """
    dtype = DTYPES[precision]
    _EMULATING.append(dtype)
    try:
        with EmulatedProducts(dtype):
            yield
    finally:
        _EMULATING.pop()


def precision_unsupported(precision: str, device: torch.device) -> str | None:
    """Why ``precision`` (fp32, bf16 or fp16) cannot run fast on ``device``, or None."""
    if precision == "fp32":
        return None
    if precision not in DTYPES:
        return f"unknown precision {precision!r}; choose from {', '.join(PRECISION_CHOICES)}"
    if device.type == "cpu" and DTYPES[precision] in _EMULATING:
        return None
    if device.type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            return f"this GPU ({torch.cuda.get_device_name()}) has no bf16: use fp16 or fp32"
        return None
    if precision == "fp16":
        return "fp16 needs a CUDA GPU; on CPUs with AVX-512 BF16 or AMX use bf16"
    if not cpu_has_native_bf16():
        return "bf16 needs a CPU with AVX-512 BF16 or AMX-BF16 (this one would emulate it)"
    return None


@contextmanager
def ieee_fp32() -> Iterator[None]:
    """FP32 convolutions and matrix products in IEEE FP32 on CUDA (no TF32), then as before."""
    if not torch.cuda.is_available():
        yield
        return
    # The fp32_precision API (torch >= 2.9); reading the legacy allow_tf32 flags after it was
    # used raises, so only the new one is read and set.
    conv = torch.backends.cudnn.conv  # type: ignore[attr-defined]  # set by CudnnModule at import
    matmul = torch.backends.cuda.matmul
    saved = conv.fp32_precision, matmul.fp32_precision
    conv.fp32_precision = matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved


# Modules whose weights autocast would recast on every call: cast once instead. Exact types only:
# a subclass (a weight-standardised conv) may compute on its weight in fp32 first.
CAST_ONCE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class AutocastBackbone(nn.Module):
    """A torch backbone run under autocast in ``dtype``; outputs handed on as fp32.

    Autocast casts an fp32 weight to ``dtype`` on every call (VGG16's convolutions: 15 M
    parameters per batch); here a copy (``fast``) holds its convolution and Linear weights in
    ``dtype``, cast once, so autocast has nothing left to cast: the same products, bit for bit,
    accumulated in fp32 by oneDNN/cuBLAS as before. On a CPU the copy runs in channels-last
    layout, oneDNN's fast path (measured: README, "Precision"); the activations come back
    contiguous. ``backbone`` stays the model's fp32 module: FG-CAM walks its layers.
    """

    def __init__(self, backbone: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.backbone = backbone
        self.dtype = dtype
        parameter = next(backbone.parameters(), None)
        self.channels_last = parameter is not None and parameter.device.type == "cpu"
        self.fast = copy.deepcopy(backbone).requires_grad_(False)
        if not isinstance(backbone, torch.jit.ScriptModule):  # a script's modules stay as saved
            for module in self.fast.modules():
                if type(module) in CAST_ONCE:
                    module.to(dtype)
            if self.channels_last:
                self.fast.to(memory_format=torch.channels_last)
        layout = ", channels-last" if self.channels_last else ""
        self.name = f"torch({str(dtype).removeprefix('torch.')}{layout})"

    def forward(self, images: Tensor) -> Tensor | tuple[Tensor, ...]:
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(images.device.type, dtype=self.dtype):
            outputs = self.fast(images)
        if isinstance(outputs, Tensor):
            return _fp32(outputs)
        return tuple(_fp32(out) for out in outputs)


def _fp32(tensor: Tensor) -> Tensor:
    return tensor.to(torch.float32, memory_format=torch.contiguous_format)


__all__ = [
    "CAST_ONCE",
    "DTYPES",
    "PRECISION_CHOICES",
    "AutocastBackbone",
    "EmulatedProducts",
    "cpu_has_native_bf16",
    "emulate",
    "ieee_fp32",
    "precision_unsupported",
]
