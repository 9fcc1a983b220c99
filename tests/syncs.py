"""Counting the calls that make the host wait for the device (a GPU's), on any device."""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

SYNCS = {
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.__bool__,
    torch.Tensor.__int__,
    torch.Tensor.__float__,
    torch.Tensor.__index__,
    torch.Tensor.numpy,
    torch.equal,
}


class CountSyncs(TorchFunctionMode):
    """Counts the calls that make the host wait for the device's values."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.count += func in SYNCS
        return func(*args, **(kwargs or {}))
