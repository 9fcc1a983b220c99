"""Hugging Face ``transformers`` image classifiers (``AutoModelForImageClassification``).

``hf:ORG/NAME`` (from the local Hugging Face cache only: fdpipe never downloads them) or
``hf:/local/dir`` (``save_pretrained``'s directory), and any ``transformers`` model object given to
``Explainer``. The image processor's size, crop and normalisation become fdpipe's preprocessing,
the config's ``id2label`` the class names, the ``logits`` output the score. Module paths
(``--layer``) are the model's own: the wrapper shares the model's children.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from fdpipe.export.preprocessing import Normalisation, Preprocess
from fdpipe.export.request import ModelError
from torch import Tensor, nn

# PIL resampling codes in image processors' ``resample``
RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def is_transformers_model(module: object) -> bool:
    return any(c.__module__.startswith("transformers.") for c in type(module).__mro__)


class HFClassifier(nn.Module):
    """A ``transformers`` classifier as a module from pixels to logits, with the model's own
    module paths (its children are this module's children)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.__dict__["model"] = model  # not a child: paths stay the model's own
        self._modules = model._modules

    @property
    def hf(self) -> Any:
        return self.__dict__["model"]

    def forward(self, pixel_values: Tensor) -> Tensor:
        # ``forward`` directly: torch.fx finds only the children, never the model itself.
        return self.hf.forward(pixel_values=pixel_values).logits

    def train(self, mode: bool = True) -> HFClassifier:
        self.hf.train(mode)
        self.training = mode
        return self


def class_names_of(model: nn.Module) -> list[str] | None:
    labels = getattr(getattr(model, "config", None), "id2label", None) or {}
    try:
        names = [str(labels[i]) for i in range(len(labels))]
    except KeyError:
        return None
    return names or None


# Processors whose own code changes the standard steps in a way reproduced below; any other
# class that overrides a step is refused (its resize is not known to be the standard one).
OWN_STEPS = {
    "ConvNextImageProcessor": {"resize", "_preprocess"},  # crop_pct, below
    "BeitImageProcessor": {"preprocess", "_preprocess"},  # segmentation labels, refused
}
STEPS = ("preprocess", "_preprocess", "resize", "center_crop", "rescale_and_normalize")


def _refuse(processor: Any, reason: str) -> ModelError:
    return ModelError(f"image processor {type(processor).__name__}: {reason}; not supported")


def _size(processor: Any, value: object, what: str) -> tuple[int, int] | int:
    """A processor size: (height, width), or an int for ``shortest_edge`` alone."""
    sizes = {k: v for k, v in dict(value or {}).items() if v is not None}  # type: ignore[call-overload]
    if set(sizes) == {"height", "width"}:
        return (int(sizes["height"]), int(sizes["width"]))
    if set(sizes) == {"shortest_edge"}:
        return int(sizes["shortest_edge"])
    raise _refuse(processor, f"{what} {sizes}")


def _check_class(processor: Any) -> None:
    for cls in type(processor).__mro__:
        if cls.__module__.startswith("transformers.image_processing"):
            return  # the backends (torchvision or PIL) and their base: the standard steps
        own = [step for step in STEPS if step in vars(cls)]
        if set(own) - OWN_STEPS.get(cls.__name__.removesuffix("Pil"), set()):
            raise _refuse(processor, f"its own {', '.join(own)} (not reproduced by fdpipe)")


def preprocess_from(processor: Any) -> Preprocess:
    """The image processor's resize, centre crop, rescale and normalisation as fdpipe's
    preprocessing, step for step as transformers runs them (METHODS.md section 6): squash to
    ``{height, width}``, or the shorter side to ``shortest_edge``; then the centre ``crop_size``
    with transformers' floored offsets; ConvNeXt's ``crop_pct``; the processor's filter, resampled
    as its backend does (PIL, or torchvision on uint8 pixels: transformers' default). Options
    that give images of varying size, or steps fdpipe does not reproduce, are refused."""
    _check_class(processor)
    config = processor.to_dict()
    for flag in ("do_pad", "do_reduce_labels"):
        if config.get(flag):
            raise _refuse(processor, f"{flag}=True")
    if not config.get("do_resize"):
        raise _refuse(processor, "do_resize=False (inputs keep their own varying size)")
    resample = int(config.get("resample") if config.get("resample") is not None else 2)
    if resample not in RESAMPLE:
        raise _refuse(processor, f"resample={resample} (fdpipe: 0 nearest, 2 bilinear, 3 bicubic)")
    rescale = float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale") else 1.0
    scale = 255.0 * rescale  # fdpipe's pixels are in [0, 1], transformers' in 0..255
    scale = 1.0 if math.isclose(scale, 1.0) else scale
    if config.get("do_normalize"):
        mean, std = (
            tuple(float(v) for v in np.broadcast_to(config[key], 3))
            for key in ("image_mean", "image_std")
        )
        normalisation = Normalisation("hf", mean, std, scale)
    elif scale != 1.0:
        normalisation = Normalisation("hf", (0.0,) * 3, (1.0,) * 3, scale)
    else:
        normalisation = Normalisation.named("none")
    resize = _size(processor, config.get("size"), "size")
    make = partial(
        Preprocess,
        normalisation=normalisation,
        interpolation=RESAMPLE[resample],
        resampler="pil" if getattr(processor, "backend", "pil") == "pil" else "torchvision",
    )
    crop = config.get("do_center_crop")
    if type(processor).__name__.removesuffix("Pil") == "ConvNextImageProcessor":
        if crop or not isinstance(resize, int):
            raise _refuse(processor, "ConvNeXt's resize with a centre crop or a fixed size")
        if resize >= 384:  # transformers: warped to (s, s), no crop, from 384 up
            return make((resize, resize))
        before = int(resize / float(config.get("crop_pct", 224 / 256)))
        return make((resize, resize), resize="crop", before_crop=before)
    if crop:
        size = _size(processor, config.get("crop_size"), "crop_size")
        if not isinstance(size, tuple):
            raise _refuse(processor, "crop_size without height and width")
        return make(size, resize="crop", before_crop=resize)
    if isinstance(resize, int):
        raise _refuse(processor, "shortest_edge without a centre crop (inputs of varying size)")
    return make(resize)


@contextmanager
def own_kernels_hidden() -> Iterator[None]:
    """Imports that do not see this repository's ``kernels/`` folder as the top-level ``kernels``
    package (transformers imports Hugging Face's): it would, with the repository root on sys.path
    (``python -m`` run there, an editable install)."""
    import fdpipe.kernels

    root = Path(fdpipe.kernels.__file__).resolve().parents[1]
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != root]
    try:
        yield
    finally:
        sys.path[:] = saved


def load_hf(name: str) -> tuple[nn.Module, Preprocess, list[str] | None]:
    """``hf:`` source ``name`` (a directory or a cached ORG/NAME): model, preprocessing, names."""
    with own_kernels_hidden():
        try:
            from transformers import AutoImageProcessor, AutoModelForImageClassification
            from transformers.utils import logging
        except ImportError:
            raise ModelError("hf: models need transformers: pip install 'fdpipe[hf]'") from None
    logging.disable_progress_bar()
    where = "" if Path(name).is_dir() else " in the local Hugging Face cache (none is downloaded)"
    try:
        with own_kernels_hidden():
            model = AutoModelForImageClassification.from_pretrained(name, local_files_only=True)
            processor = AutoImageProcessor.from_pretrained(name, local_files_only=True)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(
            f"hf:{name}: no image classifier with its processor{where}: {reason}"
        ) from None
    return HFClassifier(model), preprocess_from(processor), class_names_of(model)


__all__ = ["HFClassifier", "class_names_of", "is_transformers_model", "load_hf", "preprocess_from"]
