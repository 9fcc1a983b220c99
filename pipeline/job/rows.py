"""A job's model side: the ``Explainer`` a job uses, and its maps of a batch as rows.

One row per (image, method, class), one per image that could not be decoded, in input order.
"""

from __future__ import annotations

import platform
from time import perf_counter

import numpy as np
import pyarrow as pa
import torch
import torchvision
from fdpipe import __version__
from fdpipe.api import Explainer
from fdpipe.export.class_names import class_indices
from fdpipe.export.request import ModelError
from fdpipe.job.config import ConfigError, JobConfig, RunParams
from fdpipe.job.contract import contract_violation
from fdpipe.job.decode import DecodedImage
from fdpipe.job.schema import RunStamp, TableBuilder


def job_explainer(config: JobConfig) -> Explainer:
    """The job's ``Explainer``: one per process (or Ray actor)."""
    module = config.model if isinstance(config.model, torch.nn.Module) else None
    if module is not None and config.engine != "local":
        raise ConfigError("an in-memory model runs on the local engine: give Ray a model source")
    try:
        explainer = Explainer(
            module if module is not None else config.request,
            list(config.methods),
            runtime=config.runtime,
            artifacts=config.artifacts,
            precision=config.precision,
            max_memory=config.max_memory,
            top_k=config.top_k,
        )
        if config.classes is not None:
            explainer.classes = class_indices(config.classes, explainer.model.class_names)
    except ModelError:
        raise
    except ValueError as exc:  # bad method options
        raise ConfigError(str(exc)) from exc
    n_classes = len(explainer.model.class_names)
    if config.classes is None and config.top_k > n_classes:
        raise ConfigError(f"--top-k {config.top_k} exceeds the model's {n_classes} classes")
    return explainer


def run_params(explainer: Explainer, config: JobConfig) -> RunParams:
    """What the rows depend on: a rerun must match the model fields."""
    model = explainer.model
    return RunParams(
        model=model.name,
        source=model.source,
        weights_id=model.weights_id,
        layer=model.layer,
        num_classes=model.num_classes,
        score=model.score,
        preprocess=model.preprocess.describe(),
        precision=explainer.backend.precision,
        methods={label: m.options() for label, m in explainer.methods.items()},
        classes=list(config.classes) if config.classes is not None else None,
        top_k=None if config.classes is not None else config.top_k,
        target_column=config.target_column,
        save_weights=config.save_weights,
    )


def targets_label(config: JobConfig) -> str:
    """The ``targets`` column: which classes a run explains."""
    if config.classes is not None:
        return "classes=" + ",".join(str(c) for c in config.classes)
    if config.target_column is not None:  # each image's own class, then the top-k if any
        return f"column={config.target_column}" + (f"+top-{config.top_k}" if config.top_k else "")
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
    params: RunParams, explainer: Explainer, config: JobConfig, root: str, run_id: str
) -> dict[str, object]:
    """Everything recorded in each part file under the ``fdpipe`` key."""
    return {
        "params": params.as_json(),
        "versions": versions(),
        "run": {
            "run_id": run_id,
            "backend": explainer.backend.description,
            "runtime": config.runtime,
            "engine": config.engine,
            "shard": list(config.shard),
            "batch_size": config.batch_size,
            "max_memory_bytes": explainer.budget.bytes,
            "input": str(config.input),
            "input_root": root,
        },
    }


MethodArrays = dict[str, tuple[dict[str, np.ndarray], float]]


def method_arrays(
    explainer: Explainer,
    images: list[DecodedImage],
    save_weights: bool,
    targets: list[int] | None = None,
) -> MethodArrays:
    """Per method label: its arrays (numpy) and its per-image share of the batch time.

    ``targets``: one class per image (a manifest's target column), explained first, followed by
    the explainer's top-k predictions when its ``top_k`` is above 0.
    """
    start = perf_counter()
    batch = torch.stack([image.tensor for image in images])  # type: ignore[misc]
    if targets is None:
        state = explainer.prepare(batch)
    else:
        chosen = torch.tensor(targets).view(-1, 1)
        if explainer.top_k > 0:
            state = explainer.prepare(batch)
            state.classes = torch.cat([chosen.to(state.classes.device), state.classes], dim=1)
        else:
            state = explainer.prepare(batch, classes=chosen)
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
    targets = None
    if any(image.target is not None for image in images):
        targets = []
        for image in images:  # a missing or unknown target fails that image alone
            if image.error is None:
                try:
                    if not image.target:
                        raise ModelError("no class in the manifest's target column")
                    targets.append(class_indices([image.target], explainer.model.class_names)[0])
                except ModelError as exc:
                    image.error = f"target class: {exc}"
    usable = [image for image in images if image.error is None]
    results = method_arrays(explainer, usable, save_weights, targets) if usable else {}
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
                    map_box=model.preprocess.crop_box(image.info.width, image.info.height),  # type: ignore[arg-type]
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
