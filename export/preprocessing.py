"""Preprocessing as data: a decoded picture -> the model's input (METHODS.md 0), recorded with
every output. ``Preprocess`` is a size, a resize mode and a ``Normalisation``; a user's own
transform is wrapped as ``CallablePreprocess``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from fdpipe.export.request import NORMALISATIONS, RESIZE_MODES, ModelError, PreprocessOptions
from PIL import Image
from torch import Tensor
from torchvision.transforms import functional as TF
from torchvision.transforms.v2 import functional as TF2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (104.006, 116.669, 122.679)
TFLITE_MEAN = (0.498, 0.498, 0.498)  # EfficientNet-Lite's TF-Lite models: (x - 0.498) / 0.502
TFLITE_STD = (0.502, 0.502, 0.502)
TORCHVISION_CROP = 224 / 256  # torchvision's eval transforms: shorter side 256, centre 224


@dataclass(frozen=True)
class Normalisation:
    """Resized image in [0, 1] -> model input: ``(x[order] * scale - mean) / std``."""

    name: str  # "imagenet", "caffe", "tf-lite", "none" or "custom"
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float = 1.0  # caffe models read 0..255
    order: str = "RGB"  # or "BGR" (caffe)

    @classmethod
    def named(cls, name: str, channels: int = 3) -> Normalisation:
        known = {
            "imagenet": (IMAGENET_MEAN, IMAGENET_STD, 1.0, "RGB"),
            "caffe": (CAFFE_BGR_MEAN, (1.0, 1.0, 1.0), 255.0, "BGR"),
            "tf-lite": (TFLITE_MEAN, TFLITE_STD, 1.0, "RGB"),
            "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 1.0, "RGB"),
        }
        if name not in known:
            raise ModelError(
                f"unknown normalisation {name!r}; choose from {', '.join(NORMALISATIONS)}"
            )
        mean: tuple[float, ...]
        std: tuple[float, ...]
        mean, std, scale, order = known[name]
        if channels == 1:  # a grayscale model: the mean of the three channels' statistics
            mean, std, order = (sum(mean) / 3,), (sum(std) / 3,), "RGB"
        return cls(name, tuple(mean), tuple(std), scale, order)

    def __call__(self, image01: Tensor) -> Tensor:
        if self.order == "BGR":
            image01 = image01.flip(-3)
        mean = torch.tensor(self.mean, dtype=image01.dtype, device=image01.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=image01.dtype, device=image01.device).view(-1, 1, 1)
        return (image01 * self.scale - mean) / std

    def describe(self) -> dict[str, object]:
        return {
            "kind": self.name,
            "mean": list(self.mean),
            "std": list(self.std),
            "scale": self.scale,
            "order": self.order,
        }


@dataclass(frozen=True)
class Preprocess:
    """Decoded RGB picture -> model input (METHODS.md 0), as data recorded with every output.

    ``squash``: the whole image resized to ``size`` (aspect ratio not kept). ``crop``: shorter
    side resized to ``min(size) / crop_fraction``, then the centre ``size`` cut out (torchvision's
    and timm's eval transforms); the map then covers :meth:`crop_box` of the original image.
    ``before_crop`` (Hugging Face image processors, ``export/hf.py``) gives the resize before the
    crop exactly instead: ``(h, w)`` squashes to it, an int is the shorter side; the crop's
    offsets are then floored, as transformers' ``center_crop`` does (torchvision rounds them).
    ``resampler``: ``pil`` (PIL's resize) or ``torchvision`` (torchvision's antialiased resize of
    the uint8 pixels, what transformers' default image processors run).
    """

    size: tuple[int, int]  # (height, width)
    normalisation: Normalisation
    resize: str = "squash"
    crop_fraction: float = TORCHVISION_CROP
    channels: int = 3  # 1: grayscale models
    interpolation: str = "bilinear"
    before_crop: tuple[int, int] | int | None = None
    resampler: str = "pil"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ModelError(f"unknown resize mode {self.resize!r}; choose from squash, crop")
        if len(self.size) != 2 or not all(isinstance(s, int) and 8 <= s <= 4096 for s in self.size):
            raise ModelError(f"input size must be 1 or 2 integers in 8..4096, got {self.size}")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ModelError(f"crop fraction must be in (0, 1], got {self.crop_fraction}")
        if self.channels not in (1, 3):
            raise ModelError(f"channels must be 1 or 3, got {self.channels}")
        stats = (self.normalisation.mean, self.normalisation.std)
        if any(len(v) != self.channels for v in stats):
            raise ModelError(
                f"mean and std need {self.channels} value(s) for {self.channels} channel(s)"
            )
        if not all(np.isfinite(v).all() for v in stats) or not all(s > 0 for s in stats[1]):
            raise ModelError("mean must be finite and std finite and > 0")
        if self.interpolation not in ("bilinear", "bicubic", "nearest"):
            raise ModelError(f"unknown interpolation {self.interpolation!r}")
        if self.resampler not in ("pil", "torchvision"):
            raise ModelError(f"unknown resampler {self.resampler!r}")
        before = self.before_crop
        sides = (before,) * 2 if isinstance(before, int) else before
        if sides is not None and any(b < s for b, s in zip(sides, self.size, strict=True)):
            raise ModelError(f"a resize to {before} is smaller than its crop {self.size}")

    @property
    def _mode(self) -> TF.InterpolationMode:
        return TF.InterpolationMode(self.interpolation)

    def _resized(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) before the centre crop: torchvision's (and transformers') arithmetic
        for a shorter side."""
        if isinstance(self.before_crop, tuple):
            return self.before_crop
        side = self.before_crop or round(min(self.size) / self.crop_fraction)
        if width <= height:
            return int(side * height / width), side
        return side, int(side * width / height)

    def _offsets(self, height: int, width: int) -> tuple[int, int]:
        """(top, left) of the centre crop of a (height, width) image."""
        if self.before_crop is not None:  # transformers' center_crop floors
            return (height - self.size[0]) // 2, (width - self.size[1]) // 2
        return round((height - self.size[0]) / 2.0), round((width - self.size[1]) / 2.0)

    def __call__(self, image: Image.Image) -> Tensor:
        if self.resampler == "torchvision":
            return self.from_pixels(TF.pil_to_tensor(image.convert("RGB")))
        if self.channels == 1:
            image = image.convert("L")
        if self.resize == "squash":
            resized = TF.resize(image, list(self.size), interpolation=self._mode)
        else:
            size = self._resized(image.width, image.height)
            resized = TF.resize(image, list(size), interpolation=self._mode)
            resized = TF.crop(resized, *self._offsets(*size), *self.size)
        return self.normalisation(TF.to_tensor(resized))

    def from_pixels(self, pixels: Tensor) -> Tensor:
        """The same steps on decoded RGB pixels, a uint8 (3, H, W) tensor, on its own device (a
        GPU decoder's output), in torch. Resampling follows PIL's: antialiased, width then
        height, each pass rounded to 8 bits; the inputs then differ from PIL's in ~1 % of the
        values by one level (maps at r >= 0.999, a test); with the ``torchvision`` resampler it
        is the resampling itself."""
        image = pixels if self.resampler == "torchvision" else pixels.float()
        if self.channels == 1:
            image = TF.rgb_to_grayscale(image).round()
        height, width = image.shape[-2:]
        if self.resize == "squash":
            return self.normalisation(self._resample(image, *self.size) / 255)
        new_h, new_w = self._resized(width, height)
        resized = self._resample(image, new_h, new_w)
        cropped = TF.crop(resized, *self._offsets(new_h, new_w), *self.size)
        return self.normalisation(cropped / 255)

    def _resample(self, image: Tensor, height: int, width: int) -> Tensor:
        if self.resampler == "torchvision":  # as transformers: v2, contiguous (C, H, W) uint8
            return TF2.resize(image.contiguous(), [height, width], self._mode, antialias=True)
        for size in ([image.shape[-2], width], [height, width]):  # PIL: horizontal, vertical
            if list(image.shape[-2:]) != size:
                resized = TF.resize(image, size, interpolation=self._mode, antialias=True)
                image = resized.clamp(0, 255).round()
        return image

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) in original pixels that the model input (and map) covers."""
        if self.resize == "squash":
            return (0.0, 0.0, float(width), float(height))
        new_h, new_w = self._resized(width, height)
        top, left = self._offsets(new_h, new_w)
        sx, sy = width / new_w, height / new_h
        return (left * sx, top * sy, (left + self.size[1]) * sx, (top + self.size[0]) * sy)

    @classmethod
    def described(cls, description: Mapping[str, Any]) -> Preprocess:
        """The preprocessing that :meth:`describe` gave ``description`` (as an output records
        it); ModelError in one line for one it cannot come from (a user's own transform, a
        tampered record)."""
        if "callable" in description:
            raise ModelError(
                f"the maps were made with a transform of the caller's own "
                f"({description['callable']}): rebuild the model in Python with it"
            )
        try:
            height, width = description["resize"]
            resampler, _, interpolation = str(description["interpolation"]).partition(" ")
            before = description.get("before_crop")
            normalisation = Normalisation(
                str(description["kind"]),
                tuple(float(v) for v in description["mean"]),
                tuple(float(v) for v in description["std"]),
                float(description["scale"]),
                str(description["order"]),
            )
            return cls(
                (int(height), int(width)),
                normalisation,
                resize=str(description["resize_mode"]),
                crop_fraction=float(description.get("crop_fraction", TORCHVISION_CROP)),
                channels=int(description["channels"]),
                interpolation=interpolation,
                before_crop=(int(before[0]), int(before[1]))
                if isinstance(before, list)
                else before,
                resampler=resampler.replace("PIL", "pil"),
            )
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ModelError(
                f"recorded preprocessing {dict(description)} is not fdpipe's: {exc}"
            ) from None

    def summary(self) -> str:
        """One line: what every image goes through (logged at the start of every run)."""
        norm = self.normalisation
        crop = ""
        if self.before_crop is not None:
            crop = f" (centre crop of a resize to {self.before_crop})"
        elif self.resize == "crop":
            crop = f" (centre crop, {self.crop_fraction:g} of the shorter side)"
        extra = (", x255" if norm.scale != 1 else "") + (", BGR" if norm.order == "BGR" else "")
        return (
            f"resize {self.resize} to {self.size[0]}x{self.size[1]}{crop}, "
            f"{self.resampler.replace('pil', 'PIL')} {self.interpolation}, "
            f"{self.channels} channel(s), mean {_numbers(norm.mean)}, std {_numbers(norm.std)} "
            f"({norm.name}{extra})"
        )

    def describe(self) -> dict[str, object]:
        crop: dict[str, object] = {}
        if self.before_crop is not None:
            before = self.before_crop
            crop = {
                "before_crop": list(before) if isinstance(before, tuple) else before,
                "crop_offsets": "floor",
            }
        elif self.resize == "crop":
            crop = {"crop_fraction": self.crop_fraction}
        return {
            "resize": list(self.size),
            "resize_mode": self.resize,
            **crop,
            "interpolation": f"{self.resampler.replace('pil', 'PIL')} {self.interpolation}",
            "channels": self.channels,
            **self.normalisation.describe(),
        }


class CallablePreprocess:
    """A user's own transform (PIL image -> tensor), e.g. torchvision ``weights.transforms()``."""

    def __init__(self, transform: Callable[[Image.Image], Tensor]) -> None:
        self.transform = transform
        probe = transform(Image.new("RGB", (320, 256), (128, 128, 128)))
        if not isinstance(probe, Tensor) or probe.ndim != 3:
            raise ModelError("preprocess must map a PIL image to a (C, H, W) tensor")
        self.channels, height, width = probe.shape
        self.size = (int(height), int(width))

    def __call__(self, image: Image.Image) -> Tensor:
        return self.transform(image)

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        # What an arbitrary transform keeps is unknown: overlays assume the whole image.
        return (0.0, 0.0, float(width), float(height))

    def describe(self) -> dict[str, object]:
        return {"callable": repr(self.transform), "input_size": list(self.size)}

    def summary(self) -> str:
        return f"the caller's own transform {self.transform!r} to {self.size[0]}x{self.size[1]}"


def _numbers(values: tuple[float, ...]) -> str:
    return ",".join(f"{v:g}" for v in values)


AnyPreprocess = Preprocess | CallablePreprocess
# What a caller may give as ``preprocess``: overrides of the model's own, or a whole one.
PreprocessArg = PreprocessOptions | AnyPreprocess | Callable[[Image.Image], Tensor]


def imagenet_preprocess(size: tuple[int, int] = (224, 224), name: str = "imagenet") -> Preprocess:
    return Preprocess(size, Normalisation.named(name))


__all__ = [
    "TORCHVISION_CROP",
    "AnyPreprocess",
    "CallablePreprocess",
    "Normalisation",
    "Preprocess",
    "PreprocessArg",
    "imagenet_preprocess",
]
