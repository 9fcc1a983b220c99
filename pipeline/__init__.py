"""fdpipe: dataset-scale class activation maps (FD-CAM and its baselines) for CNN classifiers."""

from fdpipe.api import Explanation, explain
from fdpipe.export.models import available_models, load_model
from fdpipe.export.split import split_at
from fdpipe.kernels import METHODS

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "Explanation",
    "__version__",
    "available_models",
    "explain",
    "load_model",
    "split_at",
]
