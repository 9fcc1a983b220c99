"""fdpipe: dataset-scale class activation maps (FD-CAM and its baselines) for CNN classifiers.

The public names load on first use, so that ``import fdpipe`` (and the command line's ``--help``)
does not pay for torch until a model is needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.2.0"

_PUBLIC = {
    "Explainer": "fdpipe.api",
    "Explanation": "fdpipe.api",
    "explain": "fdpipe.api",
    "METHODS": "fdpipe.kernels",
    "available_models": "fdpipe.export.loading",
    "load_model": "fdpipe.export.loading",
    "ModelRequest": "fdpipe.export.request",
    "PreprocessOptions": "fdpipe.export.request",
    "split_at": "fdpipe.export.split",
    "read_maps": "fdpipe.job.reader",
    "image_file": "fdpipe.job.reader",
    "JobConfig": "fdpipe.job.config",
    "run_job": "fdpipe.job.run",
}

if TYPE_CHECKING:
    from fdpipe.api import Explainer, Explanation, explain
    from fdpipe.export.loading import available_models, load_model
    from fdpipe.export.request import ModelRequest, PreprocessOptions
    from fdpipe.export.split import split_at
    from fdpipe.job.config import JobConfig
    from fdpipe.job.reader import image_file, read_maps
    from fdpipe.job.run import run_job
    from fdpipe.kernels import METHODS


def __getattr__(name: str) -> object:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'fdpipe' has no attribute {name!r}")


__all__ = [
    "METHODS",
    "Explainer",
    "Explanation",
    "JobConfig",
    "ModelRequest",
    "PreprocessOptions",
    "__version__",
    "available_models",
    "explain",
    "image_file",
    "load_model",
    "read_maps",
    "run_job",
    "split_at",
]
