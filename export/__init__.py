"""Model side: registry, splitting at the target layer, ONNX and TensorRT building."""

from fdpipe.export.models import LoadedModel, ModelError, available_models, load_model
from fdpipe.export.split import split_at

__all__ = ["LoadedModel", "ModelError", "available_models", "load_model", "split_at"]
