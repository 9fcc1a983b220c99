"""What the command line shows before it runs anything: choices and defaults, torch-free.

``fdpipe --help`` must answer in a fraction of torch's import time, so the command modules take
their choices from here: the model's from the torch-free model request itself, the others as
mirrors that ``tests/cli/test_consistency.py`` checks against their sources.
"""

from __future__ import annotations

from pathlib import Path

from fdpipe.export.request import DEFAULT_MODEL, NORMALISATIONS, RESIZE_MODES, SCORES

METHOD_NAMES = (  # fdpipe.kernels.METHODS
    "fdcam",
    "gradcam",
    "gradcampp",
    "xgradcam",
    "layercam",
    "ablationcam",
    "scorecam",
    "groupcam",
    "fgcam",
)
CAM_METHODS = tuple(name for name in METHOD_NAMES if name != "fgcam")  # FG-CAM refines one
FGCAM_BASES = ("gradcam", "scorecam", "fdcam")
RUNTIMES = ("auto", "torch", "onnxruntime", "tensorrt")  # fdpipe.backends.RUNTIMES
PRECISION_CHOICES = ("fp32", "bf16", "fp16", "auto")  # fdpipe.kernels.precision.PRECISION_CHOICES
ENGINES = ("local", "ray")  # fdpipe.job.config.ENGINES
DECODES = ("auto", "cpu", "device")  # fdpipe.job.config.DECODES
DEFAULT_COLORMAP = "jet"  # fdpipe.display.DEFAULT_COLORMAP
OPSET = 18  # fdpipe.export.onnx.OPSET
MAX_PIXELS = 40_000_000  # fdpipe.images.MAX_PIXELS
POINTING_TOLERANCE = 15.0  # fdpipe.evaluation.pointing.POINTING_TOLERANCE
VOC_TO_IMAGENET = Path(__file__).parents[1] / "evaluation" / "data" / "voc_to_imagenet.json"

__all__ = [
    "CAM_METHODS",
    "DECODES",
    "DEFAULT_MODEL",
    "ENGINES",
    "FGCAM_BASES",
    "MAX_PIXELS",
    "METHOD_NAMES",
    "NORMALISATIONS",
    "OPSET",
    "POINTING_TOLERANCE",
    "PRECISION_CHOICES",
    "RESIZE_MODES",
    "RUNTIMES",
    "SCORES",
    "VOC_TO_IMAGENET",
]
