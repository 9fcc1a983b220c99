"""A ``Manifest`` for tests that need one without exporting a model."""

from __future__ import annotations

from typing import Any

from fdpipe.export.onnx import Manifest


def make_manifest(**fields: Any) -> Manifest:
    """A SqueezeNet-shaped manifest; ``fields`` replace any of its values."""
    values: dict[str, Any] = {
        "model": "squeezenet1_1",
        "source": "squeezenet1_1",
        "weights": "random-seed-0",
        "layer": "features.12",
        "num_classes": 1000,
        "preprocessing": {},
        "input_shape": [3, 224, 224],
        "activation_shape": [512, 13, 13],
        "extra_shapes": [],
        "masked_head": {"masked_head": "factorised", "masked_head_probabilities": "explicit"},
        "precision": "fp32",
        "opset": 18,
        "fdpipe_version": "0",
        "torch_version": "0",
        "parity_max_relative_error": {},
        "files": {},
    }
    return Manifest(**(values | fields))
