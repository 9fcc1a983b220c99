"""Hugging Face ``transformers`` image classifiers (``AutoModelForImageClassification``).

``hf:ORG/NAME`` (from the local Hugging Face cache only: fdpipe never downloads them) or
``hf:/local/dir`` (``save_pretrained``'s directory), and any ``transformers`` model object given to
``Explainer``. The image processor's size, crop and normalisation become fdpipe's preprocessing,
the config's ``id2label`` the class names, the ``logits`` output the score. Module paths
(``--layer``) are the model's own: the wrapper shares the model's children.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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


def _side(size: dict[str, int] | int) -> tuple[int, int] | int:
    if isinstance(size, int):
        return size
    if "height" in size and "width" in size:
        return (int(size["height"]), int(size["width"]))
    return int(size.get("shortest_edge", size.get("longest_edge", 224)))


def preprocess_from(processor: Any) -> Preprocess:
    """The image processor's resize, centre crop and normalisation as fdpipe's preprocessing."""
    resize = _side(processor.size) if getattr(processor, "do_resize", True) else 224
    crop = getattr(processor, "do_center_crop", False)
    mean = tuple(float(v) for v in processor.image_mean)
    std = tuple(float(v) for v in processor.image_std)
    normalise = getattr(processor, "do_normalize", True)
    normalisation = Normalisation("hf", mean, std) if normalise else Normalisation.named("none")
    interpolation = RESAMPLE.get(int(getattr(processor, "resample", 2)), "bilinear")
    if crop:
        size = _side(processor.crop_size)
        size = size if isinstance(size, tuple) else (size, size)
        shorter = min(resize) if isinstance(resize, tuple) else resize
        fraction = min(1.0, min(size) / shorter)
        return Preprocess(size, normalisation, "crop", fraction, interpolation=interpolation)
    crop_pct = getattr(processor, "crop_pct", None)  # ConvNeXt: shorter side / crop_pct, crop
    if isinstance(resize, int) and crop_pct:
        return Preprocess(
            (resize, resize), normalisation, "crop", float(crop_pct), 3, interpolation
        )
    size = resize if isinstance(resize, tuple) else (resize, resize)
    return Preprocess(size, normalisation, interpolation=interpolation)


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
