"""The dataset job behind ``fdpipe explain``, one module per stage:
``setup -> inputs -> plan -> decode -> rows -> parts``, run by the local or the Ray engine
(``local_engine``, ``ray_engine``) and put in a row by ``run``; ``reader`` reads an output back.

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
