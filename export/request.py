"""The model request: what a user asks for (source, weights, layer, preprocessing, class names,
score), as plain data that imports no torch, so that the command line checks it before start-up.

``ModelRequest.load()`` hands it to :func:`fdpipe.export.loading.load_model`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from fdpipe.errors import FdpipeError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from fdpipe.export.loading import LoadedModel
    from fdpipe.export.preprocessing import Preprocess, PreprocessArg

DEFAULT_MODEL = "vgg16"
OFFLINE_MODEL = "squeezenet1_1"
RESIZE_MODES = ("squash", "crop")
SCORES = ("softmax", "sigmoid", "logit")
NORMALISATIONS = ("imagenet", "caffe", "tf-lite", "none")


class ModelError(FdpipeError, ValueError):
    """A model, layer or weights file that cannot be used, with the valid choices in the message."""


OFFLINE_ENV = "FDPIPE_OFFLINE"
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def offline_from_environment() -> bool:
    """``FDPIPE_OFFLINE``: only the documented spellings; a typo must not mean "download"."""
    text = os.environ.get(OFFLINE_ENV, "").strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ModelError(
        f"{OFFLINE_ENV}={os.environ[OFFLINE_ENV]!r} is not a boolean: use one of "
        f"{', '.join(TRUE_WORDS)} (offline) or {', '.join(FALSE_WORDS[:-1])} or empty (online)"
    )


@dataclass(frozen=True)
class PreprocessOptions:
    """User overrides of a model's own preprocessing (``--input-size``, ``--resize``, ...)."""

    size: tuple[int, int] | None = None
    resize: str | None = None
    normalisation: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channels: int | None = None
    crop_fraction: float | None = None

    def __post_init__(self) -> None:
        """Values checked before any model is built (the CLI's one-line errors)."""
        if self.mean is not None and not all(math.isfinite(v) for v in self.mean):
            raise ModelError(f"mean must be finite, got {list(self.mean)}")
        if self.std is not None and not (
            all(math.isfinite(v) for v in self.std) and min(self.std) > 0
        ):
            raise ModelError(f"std must be finite and > 0, got {list(self.std)}")
        if self.resize is not None and self.resize not in RESIZE_MODES:
            raise ModelError(f"unknown resize mode {self.resize!r}; choose from squash, crop")

    def apply(self, base: Preprocess) -> Preprocess:
        from fdpipe.export.preprocessing import Normalisation

        channels = self.channels or base.channels
        norm = base.normalisation
        if self.normalisation is not None:
            norm = Normalisation.named(self.normalisation, channels)
        elif channels != base.channels:
            norm = Normalisation.named(norm.name if norm.name != "custom" else "none", channels)
        if self.mean is not None or self.std is not None:

            def per_channel(values: tuple[float, ...]) -> tuple[float, ...]:
                return values * channels if len(values) == 1 else values  # one for every channel

            norm = replace(
                norm,
                name="custom",
                mean=per_channel(self.mean) if self.mean is not None else norm.mean,
                std=per_channel(self.std) if self.std is not None else norm.std,
            )
        return replace(
            base,
            size=self.size or base.size,
            resize=self.resize or base.resize,
            normalisation=norm,
            channels=channels,
            crop_fraction=self.crop_fraction or base.crop_fraction,
        )


@dataclass(frozen=True)
class ModelRequest:
    """The model to explain and how, spelled once: the CLI builds it from its model options
    (``--model``, ``--layer``, ``--weights``, ``--class-names``, ``--score``, preprocessing),
    ``JobConfig`` holds it, ``Explainer`` and ``explain`` take it; ``load()`` makes the model.

    ``source``: see :mod:`fdpipe.export.model_sources`; ``None`` is the default model, or where
    an output records one (``evaluate --maps``), that one. ``pretrained=False``: seeded random
    weights (tests, benchmarks). ``class_names``: a file or a list. ``preprocess``: overrides of
    the model's own (``PreprocessOptions``, what the CLI gives), a whole ``Preprocess``, or any
    callable PIL image -> (C, H, W) tensor.
    """

    source: str | None = None
    layer: str | None = None
    weights: Path | None = None
    pretrained: bool = True
    class_names: str | os.PathLike[str] | Sequence[str] | None = None
    preprocess: PreprocessArg | None = None
    score: str = "softmax"
    trust_pickle: bool = False
    offline: bool | None = None

    def __post_init__(self) -> None:
        check_score(self.score)
        if self.offline is None:
            offline_from_environment()  # refused here, before any start-up cost

    def load(self) -> LoadedModel:
        from fdpipe.export.loading import load_model

        rest = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "source"}
        return load_model(self.source or DEFAULT_MODEL, **rest)


def check_score(score: str) -> None:
    if score not in SCORES:
        raise ModelError(f"unknown score {score!r}; choose from {', '.join(SCORES)}")


__all__ = [
    "DEFAULT_MODEL",
    "NORMALISATIONS",
    "OFFLINE_ENV",
    "OFFLINE_MODEL",
    "RESIZE_MODES",
    "SCORES",
    "ModelError",
    "ModelRequest",
    "PreprocessOptions",
    "check_score",
    "offline_from_environment",
]
