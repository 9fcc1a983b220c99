"""Model side: the request, its sources, weights, preprocessing and loading; splitting at the
target layer; ONNX and TensorRT building. Names load on first use (``request`` is torch-free)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_PUBLIC = {
    "LoadedModel": "fdpipe.export.loading",
    "ModelError": "fdpipe.export.request",
    "available_models": "fdpipe.export.loading",
    "load_model": "fdpipe.export.loading",
    "split_at": "fdpipe.export.split",
}

if TYPE_CHECKING:
    from fdpipe.export.loading import LoadedModel, available_models, load_model
    from fdpipe.export.request import ModelError
    from fdpipe.export.split import split_at


def __getattr__(name: str) -> object:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'fdpipe.export' has no attribute {name!r}")


__all__ = ["LoadedModel", "ModelError", "available_models", "load_model", "split_at"]
