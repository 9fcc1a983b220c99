"""Reduced precision: native-support detection, refusals, and the factorised head's fp32 rows."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
import torch.fx as fx
from fdpipe.backends import BackendError, select_backend
from fdpipe.kernels import FDCAM, ExplicitMaskedHead, prepare
from fdpipe.kernels import precision as precision_module
from fdpipe.kernels.factorised_head import FactorisedMaskedHead
from fdpipe.kernels.precision import (
    CAST_ONCE,
    AutocastBackbone,
    cpu_has_native_bf16,
    ieee_fp32,
)
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

CPU_ONLY = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU refusals")


def _cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse {flags}\n")
    return path


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    assert cpu_has_native_bf16(_cpuinfo(tmp_path, "avx2 avx512f avx512_bf16"))
    assert cpu_has_native_bf16(_cpuinfo(tmp_path, "avx2 amx_tile amx_bf16"))
    assert not cpu_has_native_bf16(_cpuinfo(tmp_path, "avx avx2 fma"))


@CPU_ONLY
@pytest.mark.parametrize(
    ("precision", "message"),
    [
        ("bf16", "AVX-512 BF16 or AMX-BF16"),
        ("fp16", "fp16 needs a CUDA GPU"),
        ("fp8", "unknown precision 'fp8'"),
    ],
)
def test_precisions_this_cpu_cannot_run_fast_are_refused(
    squeezenet, monkeypatch, precision: str, message: str
) -> None:
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(BackendError, match=message):
        select_backend(squeezenet, precision=precision)


@CPU_ONLY
def test_auto_precision_resolves_and_is_recorded(squeezenet) -> None:
    backend = select_backend(squeezenet, precision="auto")
    assert backend.precision in ("fp32", "bf16")


def _linear_head() -> fx.GraphModule:
    torch.manual_seed(0)
    layers = nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
    return fx.symbolic_trace(layers.eval())


def test_bf16_factorised_head_keeps_the_last_rows_in_fp32_and_the_model_untouched() -> None:
    head = _linear_head()
    activations = torch.rand(2, 16, 2, 2)
    masks = (torch.rand(2, 40, 16) < 0.5).float()
    classes = torch.tensor([[3], [7]])
    exact = ExplicitMaskedHead(head)(activations, masks, classes)
    scorer = FactorisedMaskedHead(head, dtype=torch.bfloat16)
    scores = scorer(activations, masks, classes)
    assert scores.dtype == torch.float32 and scorer.name == "torch-factorised(bfloat16)"
    module = scorer.module_for((16, 2, 2), False)
    assert module is not None and module.blocks.dtype == torch.bfloat16
    assert module.last.weight.dtype == torch.float32  # the target rows: fp32
    assert all(p.dtype == torch.float32 for p in head.parameters())  # weights copied, not cast
    # bf16 inputs and products (8-bit mantissa), fp32 accumulation: close, not equal.
    error = (scores - exact).abs().max() / exact.abs().max()
    assert 0 < error < 2e-2


def test_bf16_fdcam_on_squeezenet_follows_fp32(squeezenet, photos, monkeypatch) -> None:
    """The bf16 path end to end (emulated where the CPU has no bf16: same numbers, slower)."""
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: True)
    model = dataclasses.replace(squeezenet, module=copy.deepcopy(squeezenet.module))
    backend = select_backend(model, precision="bf16")
    assert isinstance(backend.network.backbone, AutocastBackbone)
    assert backend.precision == "bf16"
    images = model.preprocess(photos["cat"])[None].to(backend.network.device)
    reference = select_backend(model, precision="fp32")
    state = prepare(reference.network, images, scorer=reference.scorer)
    expected = FDCAM()(state)
    actual = FDCAM()(prepare(backend.network, images, scorer=backend.scorer))
    assert torch.equal(actual.weights.argmax(-1), expected.weights.argmax(-1))
    r = torch.corrcoef(torch.stack([actual.maps.flatten(), expected.maps.flatten()]))[0, 1]
    assert r > 0.99


class _Casts(TorchDispatchMode):
    """The sources of every dtype cast (``aten._to_copy``) dispatched inside."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func is torch.ops.aten._to_copy.default and (kwargs or {}).get("dtype") is not None:
            self.sources.append(args[0].data_ptr())
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_low_precision_backbone_casts_its_weights_once_and_computes_what_autocast_does(
    squeezenet_net, dtype: torch.dtype
) -> None:
    model = copy.deepcopy(squeezenet_net.backbone)
    backbone = AutocastBackbone(model, dtype)
    weights = [m.weight for m in backbone.fast.modules() if type(m) in CAST_ONCE]
    assert weights and all(w.dtype == dtype for w in weights)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the model: untouched
    assert backbone.channels_last and "channels-last" in backbone.name
    images = torch.rand(2, 3, 224, 224)
    with torch.no_grad(), _Casts() as casts:
        activations = backbone(images)
    pointers = {p.data_ptr() for p in backbone.parameters()}
    assert not pointers & set(casts.sources)  # no weight is cast per call
    assert activations.dtype == torch.float32 and activations.is_contiguous()
    # What autocast over the fp32 model computes in the same layout: the same, bit for bit.
    reference = copy.deepcopy(model).to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        expected = reference(images.contiguous(memory_format=torch.channels_last))
    assert torch.equal(activations, expected.float())


def test_ieee_fp32_turns_tf32_off_on_cuda_and_restores_the_callers_setting(monkeypatch) -> None:
    """cuDNN's fp32 convolutions default to TF32; fdpipe's fp32 is IEEE (on a CPU: no-op)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the flags exist without one
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = conv.fp32_precision, matmul.fp32_precision
    with pytest.raises(RuntimeError, match="inside"), ieee_fp32():
        assert conv.fp32_precision == matmul.fp32_precision == "ieee"
        raise RuntimeError("inside")
    assert (conv.fp32_precision, matmul.fp32_precision) == before
