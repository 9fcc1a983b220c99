"""The dataset job behind ``fdpipe explain``: inputs and sharding, decoding and batching, the run
loop, the Parquet sink and reader, the Ray engine, progress.

Names load on first use, so that a torch-free submodule (``record``: the run record a refused
command line still writes) is imported without the model side.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_PUBLIC = {
    "ENGINES": "fdpipe.job.config",
    "ConfigError": "fdpipe.job.config",
    "JobConfig": "fdpipe.job.config",
    "run_job": "fdpipe.job.run",
}

if TYPE_CHECKING:
    from fdpipe.job.config import ENGINES, ConfigError, JobConfig
    from fdpipe.job.run import run_job


def __getattr__(name: str) -> object:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'fdpipe.job' has no attribute {name!r}")


__all__ = ["ENGINES", "ConfigError", "JobConfig", "run_job"]
