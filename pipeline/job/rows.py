"""A job's model side: the ``Explainer`` a job uses, and its maps of a batch as rows.

One row per (image, method, class), one per image that could not be decoded, in input order.
"""

from __future__ import annotations

import platform
from pathlib import Path
from time import perf_counter

import numpy as np
import pyarrow as pa
import torch
import torchvision
from fdpipe import __version__
from fdpipe.api import Explainer
from fdpipe.export.models import ModelError
from fdpipe.job.config import ConfigError, JobConfig
from fdpipe.job.contract import contract_violation
from fdpipe.job.decode import DecodedImage
from fdpipe.job.schema import RunStamp, TableBuilder


def job_explainer(config: JobConfig) -> Explainer:
    """The job's ``Explainer``: one per process (or Ray actor)."""
    try:
        explainer = Explainer(
            config.model,
            list(config.methods),
            layer=config.layer,
            weights=config.weights,
            pretrained=config.pretrained,
            runtime=config.runtime,
            artifacts=config.artifacts,
            precision=config.precision,
            classes=list(config.classes) if config.classes is not None else None,
            top_k=config.top_k,
        )
    except ModelError:
        raise
    except ValueError as exc:  # bad method options
        raise ConfigError(str(exc)) from exc
    n_classes = len(explainer.model.class_names)
    bad = [c for c in config.classes or () if not 0 <= c < n_classes]
    if bad:
        raise ConfigError(f"class index {bad[0]} out of range: valid are 0..{n_classes - 1}")
    if config.classes is None and config.top_k > n_classes:
        raise ConfigError(f"--top-k {config.top_k} exceeds the model's {n_classes} classes")
    return explainer


def run_params(explainer: Explainer, config: JobConfig) -> dict[str, object]:
    """What the rows depend on: a resumed run must match these exactly."""
    return explainer.params() | {
        "classes": list(config.classes) if config.classes is not None else None,
        "top_k": None if config.classes is not None else config.top_k,
        "save_weights": config.save_weights,
    }


def targets_label(config: JobConfig) -> str:
    """The ``targets`` column: which classes a run explains."""
    if config.classes is not None:
        return "classes=" + ",".join(str(c) for c in config.classes)
    return f"top-{config.top_k}"


def versions() -> dict[str, str]:
    return {
        "fdpipe": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pyarrow": pa.__version__,
        "python": platform.python_version(),
    }


def run_metadata(
    explainer: Explainer, config: JobConfig, root: Path, run_id: str
) -> dict[str, object]:
    """Everything recorded in each part file under the ``fdpipe`` key."""
    return {
        "params": run_params(explainer, config),
        "versions": versions(),
        "run": {
            "run_id": run_id,
            "backend": explainer.backend.description,
            "runtime": config.runtime,
            "engine": config.engine,
            "shard": list(config.shard),
            "batch_size": config.batch_size,
            "input": str(config.input),
            "input_root": str(root),
        },
    }


MethodArrays = dict[str, tuple[dict[str, np.ndarray], float]]


def method_arrays(
    explainer: Explainer, images: list[DecodedImage], save_weights: bool
) -> MethodArrays:
    """Per method label: its arrays (numpy) and its per-image share of the batch time."""
    start = perf_counter()
    state = explainer.prepare(torch.stack([image.tensor for image in images]))  # type: ignore[misc]
    shared = (perf_counter() - start) / len(explainer.methods)
    results: MethodArrays = {}
    start = perf_counter()
    for label, explanation in explainer.explanations(state):
        arrays = {
            "classes": explanation.classes.cpu().numpy(),
            "logits": explanation.logits.float().cpu().numpy(),
            "probabilities": explanation.probabilities.float().cpu().numpy(),
            "native": explanation.native.float().cpu().numpy(),
        }
        if explanation.raw_range is not None:
            arrays["raw_range"] = explanation.raw_range.float().cpu().numpy()
        if save_weights and explanation.weights is not None:
            arrays["weights"] = explanation.weights.float().cpu().numpy()
        results[label] = (arrays, (perf_counter() - start + shared) / len(images))
        start = perf_counter()
    return results


def explain_rows(
    explainer: Explainer, images: list[DecodedImage], stamp: RunStamp, save_weights: bool = False
) -> pa.Table:
    """Rows for ``images`` in their order: one per (image, method, class), one per failure."""
    usable = [image for image in images if image.error is None]
    results = method_arrays(explainer, usable, save_weights) if usable else {}
    model = explainer.model
    builder = TableBuilder(model.name, model.layer, stamp)
    position = {id(image): b for b, image in enumerate(usable)}
    for image in images:
        if image.error is not None:
            builder.add_failed(image.info, image.error, image.seconds)
            continue
        b = position[id(image)]
        broken = (contract_violation(label, arrays, b) for label, (arrays, _) in results.items())
        if violation := next(filter(None, broken), None):
            builder.add_failed(image.info, violation, image.seconds)
            continue
        for label, (arrays, seconds) in results.items():
            for rank, class_index in enumerate(arrays["classes"][b]):
                builder.add_explained(
                    image.info,
                    method=label,
                    class_rank=rank,
                    class_index=int(class_index),
                    class_name=model.class_names[class_index],
                    logit=float(arrays["logits"][b, rank]),
                    probability=float(arrays["probabilities"][b, rank]),
                    native_map=arrays["native"][b, rank],
                    weights=arrays["weights"][b, rank] if "weights" in arrays else None,
                    seconds=image.seconds + seconds,
                    raw_range=ranges[b, rank]
                    if (ranges := arrays.get("raw_range")) is not None
                    else None,
                )
    return builder.build()


__all__ = [
    "explain_rows",
    "job_explainer",
    "method_arrays",
    "run_metadata",
    "run_params",
    "targets_label",
    "versions",
]
