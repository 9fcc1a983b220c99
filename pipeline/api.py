"""The notebook API: ``fdpipe.explain(model, images, method="fdcam")``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from fdpipe.export.models import LoadedModel, load_model
from fdpipe.images import load_image, to_rgb
from fdpipe.kernels import CAMMethod, MaskedHeadScorer, SplitNetwork, make_method, prepare
from fdpipe.kernels.state import LayerState
from fdpipe.methods import MethodSpec
from fdpipe.runtime import select_backend
from PIL import Image, ImageOps
from torch import Tensor

ImageLike = Image.Image | np.ndarray | str | os.PathLike[str]


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


def float_to_uint8(array: np.ndarray) -> np.ndarray:
    """Float pixel arrays (0..1, or 0..255 when above 1) as uint8; other arrays unchanged."""
    if array.dtype.kind != "f":
        return array
    high = 1.0 if array.max(initial=0) <= 1.0 else 255.0
    return np.clip(np.rint(array / high * 255.0), 0, 255).astype(np.uint8)


def as_batch(images: Tensor | Sequence[ImageLike] | ImageLike, model: LoadedModel) -> Tensor:
    """Preprocessed (B, 3, H, W) from a tensor batch, PIL images, arrays or paths."""
    if isinstance(images, Tensor):
        return images if images.ndim == 4 else images[None]
    if isinstance(images, Image.Image | np.ndarray | str | os.PathLike):
        images = [images]
    tensors = []
    for item in images:
        # In-memory images get the same decoding as files (SPEC section 0): EXIF orientation,
        # alpha over white, 16-bit scaled down.
        if isinstance(item, Image.Image):
            picture = to_rgb(ImageOps.exif_transpose(item))
        elif isinstance(item, np.ndarray):
            picture = to_rgb(Image.fromarray(float_to_uint8(item)))
        else:
            picture = load_image(item)
        tensors.append(model.preprocess(picture))
    return torch.stack(tensors)


def run_method(method: CAMMethod, state: LayerState) -> Explanation:
    result = method(state)
    return Explanation(
        method=method.name,
        classes=state.classes,
        logits=state.target_logits,
        probabilities=state.target_probabilities,
        maps=result.maps,
        native=result.native,
        weights=result.weights,
        scores=result.scores,
        options=method.options(),
    )


def explain(
    model: LoadedModel | str,
    images: Tensor | Sequence[ImageLike] | ImageLike,
    method: str | CAMMethod | Sequence[str | CAMMethod] = "fdcam",
    *,
    classes: Tensor | Sequence[int] | Sequence[Sequence[int]] | int | None = None,
    top_k: int = 1,
    network: SplitNetwork | None = None,
    scorer: MaskedHeadScorer | None = None,
    **method_options: object,
) -> Explanation | dict[str, Explanation]:
    """Explain ``images`` with one method (an Explanation) or several (a dict by method label).

    A method is a name (``"fdcam"``), a spec with options (``"fdcam:grouping=false"``) or a
    ``CAMMethod`` instance. ``method_options`` apply to a single named method only. Several
    methods share one backbone pass and one set of gradients. Calling this in a loop? Build the
    backend once (``backend = fdpipe.runtime.select_backend(model)``) and pass
    ``network=backend.network, scorer=backend.scorer``: the fast scorer prepares per-model
    tables (411 MB of reordered fc1 weights for VGG16) on first use.
    """
    loaded = load_model(model) if isinstance(model, str) else model
    if network is None:
        backend = select_backend(loaded, runtime="torch")
        network, scorer = backend.network, scorer or backend.scorer
    batch = as_batch(images, loaded).to(network.device)
    state = prepare(network, batch, classes=classes, top_k=top_k, scorer=scorer)
    single = isinstance(method, str | CAMMethod)
    methods = [method] if single else list(method)
    if method_options and not (single and isinstance(method, str)):
        raise ValueError(
            "keyword options apply to one named method; for several, use specs like "
            "'fdcam:grouping=false' or CAMMethod instances"
        )
    built: dict[str, CAMMethod] = {}
    for item in methods:
        if isinstance(item, CAMMethod):
            built[item.name] = item
        else:
            spec = MethodSpec.parse(item)
            built[spec.label] = make_method(spec.name, **spec.options, **method_options)
    results = {label: run_method(m, state) for label, m in built.items()}
    return next(iter(results.values())) if single else results
