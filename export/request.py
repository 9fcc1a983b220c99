"""The model request: what a user asks for (source, weights, layer, preprocessing, class names,
score), as plain data that imports no torch, so that the command line checks it before start-up.

``ModelRequest.load()`` hands it to :func:`fdpipe.export.loading.load_model`.
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


BY_POSITION = "by-position"
MAX_MAP_BYTES = 16 << 20  # a key map of the largest models is well under 1 MiB
WeightsMap = str | dict[str, str]  # BY_POSITION, or checkpoint key -> model key


def weights_map_of(value: str | os.PathLike[str] | Mapping[str, str] | None) -> WeightsMap | None:
    """``--weights-map``: ``by-position``, a JSON file of checkpoint key -> model key, or (from
    Python) that mapping; checked here, before torch loads. ModelError in one line otherwise."""
    if value is None or value == BY_POSITION:
        return value
    if isinstance(value, Mapping):
        return _checked_map(value, "the weights map")
    if not isinstance(value, str | os.PathLike):
        raise ModelError(f"a weights map is by-position, a JSON file or a dict, not {value!r}")
    path = Path(value)
    try:
        info = path.stat()
    except OSError as exc:
        raise ModelError(f"weights map {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):  # a FIFO would block, a device would never end
        raise ModelError(f"weights map {path} is not a regular file (give by-position or a .json)")
    if info.st_size > MAX_MAP_BYTES:
        raise ModelError(f"weights map {path} is {info.st_size} bytes: not a key map")

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    def no_repeats(pairs: list[tuple[str, object]]) -> dict[str, object]:
        found = dict(pairs)
        if len(found) < len(pairs):
            seen: set[str] = set()
            twice = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
            raise ValueError(f"key {twice!r} given twice")
        return found

    try:
        loaded = json.loads(
            path.read_bytes().decode("utf-8"), parse_constant=refuse, object_pairs_hook=no_repeats
        )
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc).splitlines()[0][:200]
        raise ModelError(f"weights map {path} cannot be read as JSON: {reason}") from None
    if not isinstance(loaded, dict):
        raise ModelError(
            f"weights map {path} holds a JSON {type(loaded).__name__}, not an object of "
            f'checkpoint key -> model key ({{"backbone.conv.weight": "features.0.weight"}})'
        )
    return _checked_map(loaded, f"weights map {path}")


def _checked_map(mapping: Mapping[Any, Any], where: str) -> dict[str, str]:
    if not mapping:
        raise ModelError(f"{where} maps no key")
    bad = [k for k, v in mapping.items() if not (isinstance(k, str) and isinstance(v, str))]
    if bad:
        raise ModelError(f"{where}: keys and values must be strings (key {bad[0]!r})")
    targets: dict[str, list[str]] = {}
    for key, target in mapping.items():
        targets.setdefault(str(target), []).append(str(key))
    twice = {t: ks for t, ks in targets.items() if len(ks) > 1}
    if twice:
        target, keys = next(iter(twice.items()))
        raise ModelError(
            f"{where}: {len(twice)} model key(s) named more than once, e.g. {target!r} "
            f"from {', '.join(map(repr, keys[:3]))}"
        )
    return {str(k): str(v) for k, v in mapping.items()}


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

            def model_order(values: tuple[float, ...]) -> tuple[float, ...]:
                # The user's values are R,G,B on [0, 1] pixels (one: every channel); the
                # normalisation subtracts in the model's channel order (caffe: BGR).
                values = values * channels if len(values) == 1 else values
                return values[::-1] if norm.order == "BGR" else values

            # On [0, 1] pixels throughout: the base's statistics leave their scale (caffe: 0..255).
            norm = replace(
                norm,
                name="custom",
                mean=model_order(self.mean)
                if self.mean is not None
                else tuple(v / norm.scale for v in norm.mean),
                std=model_order(self.std)
                if self.std is not None
                else tuple(v / norm.scale for v in norm.std),
                scale=1.0,
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
    an output records one (``evaluate --maps``), that one. ``weights_map``: how the ``weights``
    file's keys name the model's tensors when they differ: ``"by-position"`` (in order; count
    and shapes must match), a JSON file or a dict of checkpoint key -> model key (other keys keep
    their names). ``pretrained=False``: seeded random weights (tests, benchmarks).
    ``class_names``: a file or a list. ``preprocess``: overrides of the model's own
    (``PreprocessOptions``, what the CLI gives), a whole ``Preprocess``, or any callable PIL
    image -> (C, H, W) tensor.
    """

    source: str | None = None
    layer: str | None = None
    weights: Path | None = None
    weights_map: WeightsMap | os.PathLike[str] | Mapping[str, str] | None = None
    pretrained: bool = True
    class_names: str | os.PathLike[str] | Sequence[str] | None = None
    preprocess: PreprocessArg | None = None
    score: str = "softmax"
    trust_pickle: bool = False
    offline: bool | None = None

    def __post_init__(self) -> None:
        check_score(self.score)
        object.__setattr__(self, "weights_map", weights_map_of(self.weights_map))
        if self.weights_map is not None and self.weights is None:
            raise ModelError("a weights map applies to a weights file: give --weights FILE too")
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
    "BY_POSITION",
    "DEFAULT_MODEL",
    "NORMALISATIONS",
    "OFFLINE_ENV",
    "OFFLINE_MODEL",
    "RESIZE_MODES",
    "SCORES",
    "ModelError",
    "ModelRequest",
    "PreprocessOptions",
    "WeightsMap",
    "check_score",
    "offline_from_environment",
    "weights_map_of",
]
