"""Loading: a source's model made ready to explain (eval mode, frozen, layer checked, class
count read from a probe forward, names and preprocessing settled) as a :class:`LoadedModel`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from fdpipe.export.class_names import default_class_names, read_class_names
from fdpipe.export.hf import HFClassifier, class_names_of, is_transformers_model
from fdpipe.export.layers import check_layer, default_layer, device_of
from fdpipe.export.model_sources import REGISTRY, Built, build, own_preprocess, recorded_source
from fdpipe.export.preprocessing import (
    AnyPreprocess,
    CallablePreprocess,
    Preprocess,
    PreprocessArg,
)
from fdpipe.export.request import (
    DEFAULT_MODEL,
    ModelError,
    PreprocessOptions,
    WeightsMap,
    check_score,
    weights_map_of,
)
from fdpipe.export.weights import tensors_id
from torch import Tensor, nn


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
    # The weights file given (``--weights``), absolute, and its sha256; recorded with outputs
    # so that ``evaluate --maps`` loads it again (or says it is gone or changed).
    weights_file: tuple[str, str] | None = None
    weights_map: WeightsMap | None = None  # how that file's keys were renamed

    def __post_init__(self) -> None:
        check_score(self.score)
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


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    layer: str | None = None,
    weights: str | Path | None = None,
    weights_map: WeightsMap | None = None,
    pretrained: bool = True,
    seed: int = 0,
    class_names: str | os.PathLike[str] | Sequence[str] | None = None,
    preprocess: PreprocessArg | None = None,
    score: str = "softmax",
    trust_pickle: bool = False,
    offline: bool | None = None,
) -> LoadedModel:
    """Build the model of ``name`` (a source, see the module docstring) with its weights.

    ``pretrained=False`` gives seeded random weights (tests). The class count comes from the
    weights; ``class_names`` (a file or a list) names the classes; ``preprocess`` overrides the
    model's own preprocessing (``PreprocessOptions``) or replaces it (a ``Preprocess`` or any
    callable PIL image -> tensor); ``score`` says what the stored probability is;
    ``weights_map`` renames the weights file's keys (``fdpipe.export.request.weights_map_of``).
    """
    name = recorded_source(name)
    weights_path = Path(weights) if weights is not None else None
    if weights_path is not None and not weights_path.is_file():
        raise ModelError(f"weights file {weights_path} does not exist or is not a file")
    weights_map = weights_map_of(weights_map)
    if weights_map is not None and weights_path is None:
        raise ModelError("a weights map applies to a weights file: give --weights FILE too")
    built = build(name, weights_path, pretrained, seed, trust_pickle, offline, weights_map)
    loaded = finish(built, layer, class_names, preprocess, score)
    if weights_path is not None and pretrained:  # every source names a file by its sha256
        loaded.weights_file = (str(weights_path.absolute()), built.weights_id)
        loaded.weights_map = weights_map
        if weights_map is not None:  # other names, other tensors: another identity
            loaded.weights_id += f"+{weights_map_id(weights_map)}"
    return loaded


def weights_map_id(weights_map: WeightsMap) -> str:
    if isinstance(weights_map, str):
        return weights_map
    text = json.dumps(sorted(weights_map.items()))
    return f"map-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def finish(
    built: Built,
    layer: str | None,
    class_names: str | os.PathLike[str] | Sequence[str] | None,
    options: PreprocessArg | None,
    score: str,
) -> LoadedModel:
    """The steps every source shares: eval mode, preprocessing, layer, class count and names."""
    module = built.module.eval()
    for parameter in module.parameters():  # (ScriptModules have no requires_grad_)
        parameter.requires_grad_(False)
    preprocess: AnyPreprocess
    if isinstance(options, PreprocessOptions):
        preprocess = options.apply(built.preprocess)
    elif isinstance(options, Preprocess | CallablePreprocess):
        preprocess = options
    else:
        preprocess = built.preprocess if options is None else CallablePreprocess(options)
    shape = (preprocess.channels, *preprocess.size)
    target = layer or built.layer or default_layer(module, shape)
    check_layer(module, target)
    with torch.no_grad():
        try:
            logits = module(torch.zeros(1, *shape, device=device_of(module)))
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
    if class_names is None and built.class_names is not None and len(built.class_names) == count:
        names = built.class_names
    elif class_names is None:
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
    preprocess: PreprocessArg | None = None,
    class_names: str | os.PathLike[str] | Sequence[str] | None = None,
    score: str = "softmax",
    name: str | None = None,
) -> LoadedModel:
    """A ``LoadedModel`` around a module the caller built (it is used as is: copy it first)."""
    label = name or type(module).__name__
    source = f"module:{type(module).__qualname__}"
    names = class_names_of(module) if is_transformers_model(module) else None
    own = own_preprocess(module)  # a timm model's own config; ImageNet's otherwise
    if is_transformers_model(module):  # pixels -> logits, its own module paths
        module = HFClassifier(module)
    built = Built(module, label, source, tensors_id(module), own, None, names)
    return finish(built, layer, class_names, preprocess, score)


def available_models() -> list[str]:
    return sorted(REGISTRY)


__all__ = ["LoadedModel", "available_models", "finish", "from_module", "load_model"]
