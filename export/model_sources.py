"""Model sources: where a classifier comes from, built with its weights but not yet checked.

A source (``load_model(source)``, the CLI's ``--model``) is a registry name; any torchvision
classifier (the class count read from ``--weights``; without it torchvision's published weights,
fetched once into the torch hub cache unless offline); ``timm:NAME``; ``hf:ORG/NAME`` or
``hf:DIR`` (``export/hf.py``); ``package.module:factory``
or ``path/to/file.py:factory`` (a callable returning an ``nn.Module``); a TorchScript archive; a
pickled full module (only with ``trust_pickle``: unpickling runs code). Every other weights file
is read with ``torch.load(weights_only=True)``; a file that cannot be used is a ``ModelError``.
:func:`build` gives a :class:`Built`; :mod:`fdpipe.export.loading` finishes it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import pickle
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torchvision
from fdpipe.export.hf import load_hf
from fdpipe.export.preprocessing import (
    TORCHVISION_CROP,
    Normalisation,
    Preprocess,
    imagenet_preprocess,
)
from fdpipe.export.request import ModelError, WeightsMap
from fdpipe.export.weights import (
    apply_state_dict,
    efficientnet_lite0_path,
    fetch_published,
    load_by_position,
    load_ndf_squeezenet,
    load_state_dict,
    ndf_weights_path,
    num_classes_in,
    offline,
    read_state_dict,
    remap,
    sha256_file,
    tensors_id,
    torchvision_weights_locator,
)
from torch import nn

TORCHSCRIPT_SUFFIXES = frozenset({".pt", ".pth", ".ts", ".jit", ".torchscript"})


@dataclass(frozen=True)
class ModelSpec:
    name: str
    layer: str
    normalisation: str
    build: Callable[[], nn.Module]
    locate_weights: Callable[[Path | None], Path]
    load_weights: Callable[[nn.Module, Path, WeightsMap | None], None]
    input_size: tuple[int, int] = (224, 224)


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
        locate_weights=torchvision_weights_locator(arch),
        load_weights=load_state_dict,
    )


REGISTRY: dict[str, ModelSpec] = {
    "vgg16": _torchvision_spec("vgg16", "features.30"),
    "squeezenet1_1": ModelSpec(
        name="squeezenet1_1",
        layer="features.12",
        normalisation="caffe",
        build=lambda: torchvision.models.squeezenet1_1(weights=None),
        locate_weights=ndf_weights_path,
        load_weights=load_ndf_squeezenet,
    ),
    # Real ImageNet weights offline; target: the last conv block's BN + ReLU6 (1280 x 7 x 7).
    "efficientnet_lite0": ModelSpec(
        name="efficientnet_lite0",
        layer="bn2",
        normalisation="tf-lite",
        build=lambda: _timm_model("tf_efficientnet_lite0", pretrained=False),
        locate_weights=efficientnet_lite0_path,
        load_weights=load_by_position,
    ),
}


def _load_weights(
    spec: ModelSpec, module: nn.Module, path: Path, weights_map: WeightsMap | None
) -> None:
    """``spec.load_weights`` with every way a weights file can be wrong as one ModelError: not a
    pickle, a refused pickle (code is never run), a tensor instead of a dict, missing keys."""
    try:
        spec.load_weights(module, path, weights_map)
    except ModelError:
        raise
    except (pickle.UnpicklingError, EOFError, RuntimeError, TypeError, ValueError,
            KeyError, AttributeError, IndexError) as exc:  # fmt: skip
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"weights file {path} cannot be used for {spec.name}: {reason}") from None


@dataclass
class Built:
    """What a source gives before the common steps (eval mode, layer, classes, preprocessing)."""

    module: nn.Module
    name: str
    source: str
    weights_id: str
    preprocess: Preprocess
    layer: str | None = None
    class_names: list[str] | None = None  # the model's own (a Hugging Face id2label)


def _hf_source(name: str, weights: Path | None) -> Built:
    if weights is not None:
        raise ModelError("hf: models carry their weights: give the directory, not --weights")
    module, preprocess, names = load_hf(name)
    return Built(module, Path(name).name, f"hf:{name}", tensors_id(module), preprocess, None, names)


def _registry_source(
    spec: ModelSpec,
    weights: Path | None,
    pretrained: bool,
    seed: int,
    offline_only: bool | None,
    weights_map: WeightsMap | None,
) -> Built:
    preprocess = Preprocess(spec.input_size, Normalisation.named(spec.normalisation))
    torchvision_weights = spec.load_weights is load_state_dict or (
        weights is not None and zipfile.is_zipfile(weights)  # a state dict, not the ndf pickle
    )
    if pretrained and torchvision_weights and spec.name in _torchvision_names():
        # A fine-tuned state dict of any class count, sized like any torchvision name.
        built = _torchvision_source(spec.name, weights, pretrained, seed, offline_only, weights_map)
        return replace(built, source=spec.name, preprocess=preprocess, layer=spec.layer)
    if pretrained:
        path = spec.locate_weights(weights)
        module = spec.build()
        _load_weights(spec, module, path, weights_map)
        weights_id = sha256_file(path)
    else:
        module = _seeded(spec.build, seed)
        weights_id = f"random-seed-{seed}"
    return Built(module, spec.name, spec.name, weights_id, preprocess, spec.layer)


def _torchvision_names() -> set[str]:
    return set(torchvision.models.list_models(module=torchvision.models))


def _seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


def _torchvision_source(
    arch: str,
    weights: Path | None,
    pretrained: bool,
    seed: int,
    offline_only: bool | None,
    weights_map: WeightsMap | None = None,
) -> Built:
    enum = torchvision.models.get_model_weights(arch).DEFAULT
    transforms = enum.transforms()
    crop = int(transforms.crop_size[0])
    preprocess = replace(
        imagenet_preprocess((crop, crop)),
        crop_fraction=crop / int(transforms.resize_size[0]),
        interpolation=transforms.interpolation.value,
    )
    kwargs = _torchvision_build_kwargs(arch)
    if not pretrained:
        module = _seeded(lambda: torchvision.models.get_model(arch, weights=None, **kwargs), seed)
        return Built(module, arch, f"torchvision:{arch}", f"random-seed-{seed}", preprocess)
    path = weights if weights is not None else fetch_published(arch, offline_only)
    state = read_state_dict(path)
    if kwargs.get("aux_logits") is False:
        state = {
            k: v for k, v in state.items() if not k.startswith(("AuxLogits.", "aux1.", "aux2."))
        }
    module = torchvision.models.get_model(arch, weights=None, **kwargs)
    state = remap(state, module.state_dict(), weights_map, path)  # before the class count
    count = num_classes_in(state, module)
    if count is not None and count != 1000:  # a fine-tuned classifier: size it from the weights
        module = torchvision.models.get_model(arch, weights=None, num_classes=count, **kwargs)
    apply_state_dict(module, state, path)
    return Built(module, arch, f"torchvision:{arch}", sha256_file(path), preprocess)


def own_preprocess(module: nn.Module) -> Preprocess:
    """The model's own preprocessing where it carries one (a timm model's ``pretrained_cfg``:
    size, crop, interpolation, mean and std), else ImageNet's with a squash resize."""
    if not isinstance(getattr(module, "pretrained_cfg", None), dict):
        return imagenet_preprocess()
    timm = _timm()  # the model was made by timm
    config = timm.data.resolve_data_config({}, model=module)  # type: ignore[attr-defined]
    channels, height, width = config["input_size"]
    if int(channels) not in (1, 3):
        return imagenet_preprocess()
    return Preprocess(
        (int(height), int(width)),
        Normalisation("timm", tuple(config["mean"]), tuple(config["std"])),
        resize="crop",
        crop_fraction=float(config.get("crop_pct", TORCHVISION_CROP)),
        channels=int(channels),
        interpolation=str(config.get("interpolation", "bilinear")),
    )


def _timm_source(
    name: str,
    weights: Path | None,
    pretrained: bool,
    seed: int,
    offline_only: bool | None,
    weights_map: WeightsMap | None = None,
) -> Built:
    state = read_state_dict(weights) if pretrained and weights is not None else None
    kwargs: dict[str, object] = {"pretrained": False}
    if state is not None and weights is not None:
        probe = _timm_model(name, pretrained=False)
        state = remap(state, probe.state_dict(), weights_map, weights)  # before the class count
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
    return Built(module, name, f"timm:{name}", weights_id, own_preprocess(module))


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


def _factory_source(
    source: str,
    weights: Path | None,
    pretrained: bool,
    seed: int,
    weights_map: WeightsMap | None = None,
) -> Built:
    factory = _import_factory(source)
    try:
        module = _seeded(factory, seed)  # type: ignore[arg-type]
    except Exception as exc:
        raise ModelError(f"{source}() failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(module, nn.Module):
        raise ModelError(f"{source}() returned a {type(module).__name__}, not a torch nn.Module")
    if pretrained and weights is not None:
        load_state_dict(module, weights, weights_map)
        weights_id = sha256_file(weights)
    else:  # the factory's own weights
        weights_id = tensors_id(module)
    name = source.rpartition(":")[2]
    return Built(module, name, f"factory:{source}", weights_id, own_preprocess(module))


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive: a zip holding compiled code (``*/code/``) and constants."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names)


def _file_source(
    path: Path, weights: Path | None, trust_pickle: bool, weights_map: WeightsMap | None = None
) -> Built:
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
        load_state_dict(module, weights, weights_map)
    weights_id = sha256_file(weights if weights is not None else path)
    return Built(module, path.stem, source, weights_id, own_preprocess(module))


def recorded_source(source: str) -> str:
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


def runs_code(source: str) -> bool:
    """Whether building ``source`` (given or as recorded) imports or runs code from outside
    torchvision and timm: a factory, a ``file.py:factory``, a TorchScript archive, a pickle."""
    kind, _, name = source.partition(":")
    return not (
        source in REGISTRY
        or kind == "timm"
        or source in _torchvision_names()
        or (kind == "torchvision" and name in _torchvision_names())
    )


def _is_file_source(source: str) -> bool:
    path = Path(source)
    return path.suffix.lower() in TORCHSCRIPT_SUFFIXES or path.is_file()


def build(
    source: str,
    weights: Path | None,
    pretrained: bool,
    seed: int,
    trust_pickle: bool,
    offline_only: bool | None,
    weights_map: WeightsMap | None = None,
) -> Built:
    """The model of ``source`` (see the module docstring) with its weights (their keys renamed
    by ``weights_map``)."""
    if source.startswith("hf:"):
        return _hf_source(source[3:], weights)
    if source.startswith("timm:"):
        return _timm_source(source[5:], weights, pretrained, seed, offline_only, weights_map)
    if source in REGISTRY:
        spec = REGISTRY[source]
        return _registry_source(spec, weights, pretrained, seed, offline_only, weights_map)
    if _is_file_source(source):
        if not Path(source).is_file():
            raise ModelError(f"model file {source} does not exist")
        return _file_source(Path(source), weights, trust_pickle, weights_map)
    if ":" in source:
        return _factory_source(source, weights, pretrained, seed, weights_map)
    if source in _torchvision_names():
        return _torchvision_source(source, weights, pretrained, seed, offline_only, weights_map)
    classifiers = sorted(torchvision.models.list_models(module=torchvision.models))
    raise ModelError(
        f"unknown model {source!r}; registered: {', '.join(sorted(REGISTRY))}; any torchvision "
        f"classifier: {', '.join(classifiers)}; or timm:NAME, hf:ORG/NAME, hf:DIR, "
        f"module:factory, file.py:factory, a TorchScript archive"
    )


__all__ = [
    "REGISTRY",
    "TORCHSCRIPT_SUFFIXES",
    "Built",
    "ModelSpec",
    "build",
    "is_torchscript",
    "own_preprocess",
    "runs_code",
]
