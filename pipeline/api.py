"""The public API: an ``Explainer`` goes from a model to maps; ``explain`` is one call of it.

An ``Explainer`` loads the model, selects the backend (``fdpipe.backends``), builds the methods and
prepares the per-model tables once; each call then runs one backbone pass for a batch and every
method from that shared state. Backends are cached per model module, so building a new
``Explainer`` (or calling ``explain``) for a model that was already explained reuses its backend.
"""

from __future__ import annotations

import copy
import os
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from fdpipe.backends import Backend, select_backend
from fdpipe.export.class_names import class_indices
from fdpipe.export.loading import LoadedModel, from_module
from fdpipe.export.preprocessing import PreprocessArg
from fdpipe.export.request import ModelRequest
from fdpipe.images import Images, as_batch
from fdpipe.kernels import (
    CAMMethod,
    CAMResult,
    LayerState,
    MaskedHeadScorer,
    SplitNetwork,
    prepare,
)
from fdpipe.kernels.budget import MemoryBudget, default_budget
from fdpipe.kernels.precision import ieee_fp32
from fdpipe.methods import MethodSpec, build_methods
from torch import Tensor, device, nn

MethodsArg = str | MethodSpec | CAMMethod | Sequence[str | MethodSpec | CAMMethod]
Classes = Tensor | Sequence[int | str] | Sequence[Sequence[int]] | int | str | None
ClassNames = str | os.PathLike[str] | Sequence[str] | None


@dataclass
class Explanation:
    """Maps for every (image, target class) of one method."""

    method: str
    classes: Tensor  # (B, T)
    logits: Tensor  # (B, T) target-class logits on the clean image
    probabilities: Tensor  # (B, T)
    native: Tensor  # (B, T, h, w) at the explained layer's resolution, in [0, 1]
    weights: Tensor | None  # (B, T, K) channel weights, where the method has them
    scores: Tensor | None  # (B, T, K or groups) perturbation scores, where the method has them
    options: dict[str, object]
    raw_range: Tensor | None = None  # (B, T, 2) min, max of the ReLU'd raw map: its strength
    result: CAMResult = field(kw_only=True, repr=False, compare=False)  # the method's own output

    @property
    def maps(self) -> Tensor:
        """(B, T, H, W) at model input resolution, in [0, 1]: resized from ``native`` on first
        use (METHODS.md section 1 step 7), not before."""
        return self.result.maps


# Backends by model module, then (layer, runtime, artifacts, precision, device): the fast
# scorer's per-model tables (411 MB of reordered fc1 weights for VGG16) are built once per model.
BackendKey = tuple[str, str, str | None, str, str | None]
_BACKENDS: weakref.WeakKeyDictionary[nn.Module, dict[BackendKey, Backend]] = (
    weakref.WeakKeyDictionary()
)


def backend_for(
    model: LoadedModel,
    runtime: str = "auto",
    artifacts: Path | None = None,
    precision: str = "fp32",
    device: torch.device | str | None = None,
) -> Backend:
    """The backend of ``model`` for ``runtime`` and ``precision``: built on first use, reused."""
    per_model = _BACKENDS.setdefault(model.module, {})
    where = None if artifacts is None else str(Path(artifacts).resolve())
    key = (model.layer, runtime, where, precision, None if device is None else str(device))
    if key not in per_model:
        per_model[key] = select_backend(
            model, artifacts=artifacts, runtime=runtime, precision=precision, device=device
        )
    return per_model[key]


# A caller's module is explained through a copy, so that its train/eval mode, requires_grad,
# device and in-place ops stay as they were. The copy is kept while the caller's parameters are
# the same tensors at the same versions (an optimiser step bumps them: a fresh copy is made).
_COPIES: weakref.WeakKeyDictionary[nn.Module, dict[str, tuple[tuple[int, ...], LoadedModel]]] = (
    weakref.WeakKeyDictionary()
)


def _fingerprint(module: nn.Module) -> tuple[int, ...]:
    return tuple(
        v for t in module.state_dict(keep_vars=True).values() for v in (t.data_ptr(), t._version)
    )


def wrap_module(module: nn.Module, request: ModelRequest | None = None) -> LoadedModel:
    """A ``LoadedModel`` on a private copy of ``module`` with what ``request`` says of its layer,
    preprocessing, class names and score; cached while the module's weights are unchanged."""
    request = request or ModelRequest()
    key = repr((request.layer, id(request.preprocess), request.class_names, request.score))
    per_module = _COPIES.setdefault(module, {})
    fingerprint = _fingerprint(module)
    if key in per_module and per_module[key][0] == fingerprint:
        return per_module[key][1]
    private = copy.deepcopy(module)
    loaded = from_module(
        private,
        layer=request.layer,
        preprocess=request.preprocess,
        class_names=request.class_names,
        score=request.score,
    )
    per_module[key] = (fingerprint, loaded)
    return loaded


def loaded_model(
    model: LoadedModel | ModelRequest | str | nn.Module, request: ModelRequest
) -> LoadedModel:
    """The model to explain from any form ``Explainer`` takes; ``request``: its model keywords
    (its source is ``model`` where that is a source)."""
    if isinstance(model, str):
        return replace(request, source=model).load()
    if isinstance(model, nn.Module):
        if request.weights is not None:
            raise ValueError("weights apply to a model given by name: load them into it")
        return wrap_module(model, request)
    if request != ModelRequest():
        raise ValueError(
            "layer, weights, preprocess, class_names and score apply when the model is "
            "given by name or as a module, not to a LoadedModel or a ModelRequest"
        )
    return model if isinstance(model, LoadedModel) else model.load()


@lru_cache(maxsize=2)
def _registered(name: str) -> LoadedModel:
    """``explain("squeezenet1_1", ...)`` in a loop loads the model once."""
    return ModelRequest(name).load()


class Explainer:
    """From a model to maps: built once, then called on batch after batch.

    ``model`` is any ``nn.Module`` classifier (explained through a private copy: the caller's
    module is never changed), a model source for ``load_model`` (a registry or torchvision name,
    ``timm:NAME``, ``module:factory``, a TorchScript file; with ``weights``/``pretrained``), a
    ``ModelRequest`` (every model option in one object, as the CLI and ``JobConfig`` hold it), or
    a ``LoadedModel``. ``weights_map`` (``"by-position"``, a JSON file or a dict of checkpoint
    key -> model key) renames the keys of a ``weights`` file. ``target_layer`` (alias ``layer``)
    is the dotted module path to explain; default: the model's registered layer, else the last
    module giving a (B, K, h, w) map.
    ``preprocess``: ``PreprocessOptions``, a ``Preprocess``, or any callable PIL image -> (C, H, W)
    tensor such as torchvision's ``weights.transforms()``. ``class_names``: a list or a file (one
    per line, JSON list or dict). ``score``: what the probability is (softmax, sigmoid, logit).
    ``methods`` are names, ``name:key=value`` specs, ``MethodSpec`` or ``CAMMethod`` objects;
    ``method_options`` apply to a single named method. ``classes`` (indices or names, one list for
    every image, or one row per image) or ``top_k`` are the default targets of each call.
    ``runtime``, ``artifacts`` and ``device`` choose the runner, ``precision`` (fp32, bf16, fp16,
    auto) the arithmetic of the backbone and the masked-head products (``fdpipe.backends``).
    ``max_memory`` (bytes) bounds what each batch's perturbation work holds at once (default:
    ``fdpipe.kernels.budget.default_budget``); ``budget.chunks`` records the chunks it gave.
    """

    def __init__(
        self,
        model: LoadedModel | ModelRequest | str | nn.Module,
        methods: MethodsArg = "fdcam",
        *,
        target_layer: str | None = None,
        layer: str | None = None,
        weights: str | Path | None = None,
        weights_map: str | Path | Mapping[str, str] | None = None,
        pretrained: bool = True,
        preprocess: PreprocessArg | None = None,
        class_names: ClassNames = None,
        score: str = "softmax",
        device: torch.device | str | None = None,
        runtime: str = "auto",
        artifacts: Path | None = None,
        precision: str = "fp32",
        max_memory: int | None = None,
        classes: Classes = None,
        top_k: int = 1,
        **method_options: Any,
    ) -> None:
        if target_layer is not None and layer is not None and target_layer != layer:
            raise ValueError("give target_layer or layer, not both")
        keywords = ModelRequest(
            layer=target_layer or layer,
            weights=None if weights is None else Path(weights),
            weights_map=weights_map,
            pretrained=pretrained,
            preprocess=preprocess,
            class_names=class_names,
            score=score,
        )
        self.model = loaded_model(model, keywords)
        if classes is not None and top_k != 1:
            raise ValueError("give classes or top_k, not both: classes are explained as given")
        self.backend = backend_for(self.model, runtime, artifacts, precision, device)
        self.budget = MemoryBudget(max_memory or default_budget(self.device))
        self.methods: dict[str, CAMMethod] = build_methods(methods, method_options)
        for method in self.methods.values():
            method.check(self.network)  # e.g. an FG-CAM resolution that is not a layer
        self.classes = self.class_targets(classes)
        self.top_k = top_k

    def class_targets(self, classes: Classes) -> Classes:
        """``classes`` with class names replaced by their indices."""
        if isinstance(classes, str):
            return class_indices([classes], self.model.class_names)
        if isinstance(classes, Sequence) and any(isinstance(c, str) for c in classes):
            return class_indices(list(classes), self.model.class_names)  # type: ignore[arg-type]
        return classes

    @property
    def network(self) -> SplitNetwork:
        return self.backend.network

    @property
    def scorer(self) -> MaskedHeadScorer:
        return self.backend.scorer

    @property
    def device(self) -> device:
        return self.backend.network.device

    def batch(self, images: Images) -> Tensor:
        """The preprocessed (B, C, H, W) input of ``images`` on the model's device."""
        return as_batch(images, self.model.preprocess).to(self.device)

    def prepare(
        self, images: Images, *, classes: Classes = None, top_k: int | None = None
    ) -> LayerState:
        """One backbone pass: the state every method works from."""
        if classes is not None and top_k is not None:
            raise ValueError("give classes or top_k, not both: classes are explained as given")
        with ieee_fp32():
            return prepare(
                self.backend.network,
                self.batch(images),
                classes=self.classes if classes is None else self.class_targets(classes),  # type: ignore[arg-type]
                top_k=self.top_k if top_k is None else top_k,
                scorer=self.backend.scorer,
                budget=self.budget,
            )

    def explanations(self, state: LayerState) -> Iterator[tuple[str, Explanation]]:
        """(label, explanation) of each method in turn, all from ``state``."""
        probabilities = self.model.scores(state.logits).gather(1, state.classes)
        for label, method in self.methods.items():
            with ieee_fp32():
                result = method(state)
            yield (
                label,
                Explanation(
                    method=method.name,
                    classes=state.classes,
                    logits=state.target_logits,
                    probabilities=probabilities,
                    native=result.native,
                    weights=result.weights,
                    scores=result.scores,
                    options=method.options(),
                    raw_range=result.raw_range,
                    result=result,
                ),
            )

    def __call__(
        self, images: Images, *, classes: Classes = None, top_k: int | None = None
    ) -> dict[str, Explanation]:
        """Every method's explanation of ``images``, by method label, from one shared pass."""
        return dict(self.explanations(self.prepare(images, classes=classes, top_k=top_k)))


def explain(
    model: LoadedModel | ModelRequest | str | nn.Module,
    images: Images,
    method: MethodsArg = "fdcam",
    *,
    target_layer: str | None = None,
    preprocess: PreprocessArg | None = None,
    class_names: ClassNames = None,
    score: str = "softmax",
    device: torch.device | str | None = None,
    classes: Classes = None,
    top_k: int = 1,
    runtime: str = "auto",
    artifacts: Path | None = None,
    precision: str = "fp32",
    **method_options: Any,
) -> Explanation | dict[str, Explanation]:
    """Explain ``images`` with one method (an Explanation) or several (a dict by method label).

    A thin wrapper over ``Explainer`` (same model arguments): the model's backend is built on the
    first call and reused by later calls on the same model (a module's private copy too, while
    its weights are unchanged), so calling this in a loop is cheap. Several methods share one
    backbone pass and one set of gradients.
    """
    plain = (target_layer, preprocess, class_names) == (None,) * 3 and score == "softmax"
    explainer = Explainer(
        _registered(model) if isinstance(model, str) and plain else model,
        method,
        target_layer=target_layer,
        preprocess=preprocess,
        class_names=class_names,
        score=score,
        device=device,
        runtime=runtime,
        artifacts=artifacts,
        precision=precision,
        classes=classes,
        top_k=top_k,
        **method_options,
    )
    results = explainer(images)
    single = isinstance(method, str | MethodSpec | CAMMethod)
    return next(iter(results.values())) if single else results


__all__ = ["Explainer", "Explanation", "backend_for", "explain", "loaded_model", "wrap_module"]
