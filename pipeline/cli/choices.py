"""What the command line shows before it runs anything: choices and defaults, torch-free.

``fdpipe --help`` must answer in a fraction of torch's import time, so the command modules take
their choices from here; ``tests/cli/test_choices.py`` checks each against its source.
"""

from __future__ import annotations

from pathlib import Path

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
DEFAULT_MODEL = "vgg16"  # fdpipe.export.request.DEFAULT_MODEL
SCORES = ("softmax", "sigmoid", "logit")  # fdpipe.export.request.SCORES
RESIZE_MODES = ("squash", "crop")  # fdpipe.export.request.RESIZE_MODES
NORMALISATIONS = ("imagenet", "caffe", "tf-lite", "none")  # fdpipe.export.request.NORMALISATIONS
DEFAULT_COLORMAP = "jet"  # fdpipe.display.DEFAULT_COLORMAP
OPSET = 18  # fdpipe.export.onnx.OPSET
MAX_PIXELS = 40_000_000  # fdpipe.images.MAX_PIXELS
POINTING_TOLERANCE = 15.0  # fdpipe.evaluation.pointing.POINTING_TOLERANCE
VOC_TO_IMAGENET = Path(__file__).parents[1] / "evaluation" / "data" / "voc_to_imagenet.json"

__all__ = [
    "CAM_METHODS",
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
