"""The notebook API: ``fdpipe.explain(model, images, method="fdcam")``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from fdpipe.export.models import LoadedModel, load_model
from fdpipe.export.split import split_at
from fdpipe.images import load_image
from fdpipe.kernels import CAMMethod, MaskedHeadScorer, SplitNetwork, make_method, prepare
from fdpipe.kernels.state import LayerState
from PIL import Image
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


def as_batch(images: Tensor | Sequence[ImageLike] | ImageLike, model: LoadedModel) -> Tensor:
    """Preprocessed (B, 3, H, W) from a tensor batch, PIL images, arrays or paths."""
    if isinstance(images, Tensor):
        return images if images.ndim == 4 else images[None]
    if isinstance(images, Image.Image | np.ndarray | str | os.PathLike):
        images = [images]
    tensors = []
    for item in images:
        if isinstance(item, Image.Image):
            picture = item.convert("RGB")
        elif isinstance(item, np.ndarray):
            picture = Image.fromarray(item).convert("RGB")
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
    """Explain ``images`` with one method (an Explanation) or several (a dict by method name).

    Several methods share one backbone pass and one set of gradients.
    """
    loaded = load_model(model) if isinstance(model, str) else model
    network = network or split_at(loaded.module, loaded.layer)
    batch = as_batch(images, loaded)
    state = prepare(network, batch, classes=classes, top_k=top_k, scorer=scorer)
    single = isinstance(method, str | CAMMethod)
    methods = [method] if single else list(method)
    built = [m if isinstance(m, CAMMethod) else make_method(m, **method_options) for m in methods]
    results = {m.name: run_method(m, state) for m in built}
    return results[built[0].name] if single else results
