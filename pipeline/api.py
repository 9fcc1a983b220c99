"""The public API: an ``Explainer`` goes from a model to maps; ``explain`` is one call of it.

An ``Explainer`` loads the model, selects the backend (``fdpipe.backends``), builds the methods and
prepares the per-model tables once; each call then runs one backbone pass for a batch and every
method from that shared state. Backends are cached per model module, so building a new
``Explainer`` (or calling ``explain``) for a model that was already explained reuses its backend.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from fdpipe.backends import Backend, select_backend
from fdpipe.export.models import LoadedModel, load_model
from fdpipe.images import Images, as_batch
from fdpipe.kernels import CAMMethod, LayerState, MaskedHeadScorer, SplitNetwork, prepare
from fdpipe.methods import MethodSpec, build_methods
from torch import Tensor, device, nn

MethodsArg = str | MethodSpec | CAMMethod | Sequence[str | MethodSpec | CAMMethod]
Classes = Tensor | Sequence[int] | Sequence[Sequence[int]] | int | None


@dataclass
class Explanation:
    """Maps for every (image, target class) of one method."""

    method: str
    classes: Tensor  # (B, T)
    logits: Tensor  # (B, T) target-class logits on the clean image
    probabilities: Tensor  # (B, T)
    maps: Tensor  # (B, T, H, W) at model input resolution, in [0, 1]
    native: Tensor  # (B, T, h, w) at the explained layer's resolution, in [0, 1]
    weights: Tensor | None  # (B, T, K) channel weights, where the method has them
    scores: Tensor | None  # (B, T, K or groups) perturbation scores, where the method has them
    options: dict[str, object]
    raw_range: Tensor | None = None  # (B, T, 2) min, max of the ReLU'd raw map: its strength


# Backends by model module, then (layer, runtime, artifacts, precision): the fast scorer's
# per-model tables (411 MB of reordered fc1 weights for VGG16) are built once per model.
_BACKENDS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, str, str | None, str], Backend]] = (
    weakref.WeakKeyDictionary()
)


def backend_for(
    model: LoadedModel,
    runtime: str = "auto",
    artifacts: Path | None = None,
    precision: str = "fp32",
) -> Backend:
    """The backend of ``model`` for ``runtime`` and ``precision``: built on first use, reused."""
    per_model = _BACKENDS.setdefault(model.module, {})
    where = None if artifacts is None else str(Path(artifacts).resolve())
    key = (model.layer, runtime, where, precision)
    if key not in per_model:
        per_model[key] = select_backend(
            model, artifacts=artifacts, runtime=runtime, precision=precision
        )
    return per_model[key]


@lru_cache(maxsize=2)
def _registered(name: str) -> LoadedModel:
    """``explain("squeezenet1_1", ...)`` in a loop loads the model once."""
    return load_model(name)


class Explainer:
    """From a model to maps: built once, then called on batch after batch.

    ``model`` is a registry name (loaded with ``layer``/``weights``/``pretrained``) or a
    ``LoadedModel``. ``methods`` are names, ``name:key=value`` specs, ``MethodSpec`` or
    ``CAMMethod`` objects; ``method_options`` apply to a single named method. ``classes`` (one list
    for every image, or one row per image) or ``top_k`` are the default targets of each call.
    ``runtime`` and ``artifacts`` choose the engine, ``precision`` (fp32, bf16, fp16, auto) the
    arithmetic of the backbone and the masked-head products (``fdpipe.backends``).
    """

    def __init__(
        self,
        model: LoadedModel | str,
        methods: MethodsArg = "fdcam",
        *,
        layer: str | None = None,
        weights: str | Path | None = None,
        pretrained: bool = True,
        runtime: str = "auto",
        artifacts: Path | None = None,
        precision: str = "fp32",
        classes: Classes = None,
        top_k: int = 1,
        **method_options: Any,
    ) -> None:
        if isinstance(model, LoadedModel):
            if layer is not None or weights is not None:
                raise ValueError("layer and weights apply when the model is given by name")
            self.model = model
        else:
            self.model = load_model(model, layer=layer, weights=weights, pretrained=pretrained)
        self.backend = backend_for(self.model, runtime, artifacts, precision)
        self.methods: dict[str, CAMMethod] = build_methods(methods, method_options)
        for method in self.methods.values():
            method.check(self.network)  # e.g. an FG-CAM resolution that is not a layer
        self.classes = classes
        self.top_k = top_k

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
        return prepare(
            self.backend.network,
            self.batch(images),
            classes=self.classes if classes is None else classes,  # type: ignore[arg-type]
            top_k=self.top_k if top_k is None else top_k,
            scorer=self.backend.scorer,
        )

    def explanations(self, state: LayerState) -> Iterator[tuple[str, Explanation]]:
        """(label, explanation) of each method in turn, all from ``state``."""
        for label, method in self.methods.items():
            result = method(state)
            yield (
                label,
                Explanation(
                    method=method.name,
                    classes=state.classes,
                    logits=state.target_logits,
                    probabilities=state.target_probabilities,
                    maps=result.maps,
                    native=result.native,
                    weights=result.weights,
                    scores=result.scores,
                    options=method.options(),
                    raw_range=result.raw_range,
                ),
            )

    def __call__(
        self, images: Images, *, classes: Classes = None, top_k: int | None = None
    ) -> dict[str, Explanation]:
        """Every method's explanation of ``images``, by method label, from one shared pass."""
        return dict(self.explanations(self.prepare(images, classes=classes, top_k=top_k)))

    def params(self) -> dict[str, object]:
        """What the maps depend on (recorded with every output)."""
        return {
            "model": self.model.name,
            "weights_id": self.model.weights_id,
            "layer": self.model.layer,
            "preprocess": self.model.preprocess.describe(),
            "precision": self.backend.precision,
            "methods": {label: m.options() for label, m in self.methods.items()},
        }


def explain(
    model: LoadedModel | str,
    images: Images,
    method: MethodsArg = "fdcam",
    *,
    classes: Classes = None,
    top_k: int = 1,
    runtime: str = "auto",
    artifacts: Path | None = None,
    precision: str = "fp32",
    **method_options: Any,
) -> Explanation | dict[str, Explanation]:
    """Explain ``images`` with one method (an Explanation) or several (a dict by method label).

    A thin wrapper over ``Explainer``: the model's backend is built on the first call and reused
    by later calls on the same model, so calling this in a loop is cheap. Several methods share
    one backbone pass and one set of gradients.
    """
    loaded = _registered(model) if isinstance(model, str) else model
    explainer = Explainer(
        loaded,
        method,
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


__all__ = ["Explainer", "Explanation", "backend_for", "explain"]
