"""The setup stage: what a run builds once, before any image, and every later stage reads.

The job's ``Explainer`` (one per process or Ray actor), the run parameters its rows depend on
(compared on a rerun), the ``targets`` label, the metadata stored in every part file, and the
``RowFormat`` each batch's rows are written with.
"""

from __future__ import annotations

import logging
import platform

import pyarrow as pa
import torch
import torchvision
from fdpipe import __version__
from fdpipe.api import Explainer
from fdpipe.export.class_names import class_indices, default_class_names
from fdpipe.export.preprocessing import Preprocess
from fdpipe.export.request import ModelError
from fdpipe.job import decode as decode_stage
from fdpipe.job.config import DECODES, ConfigError, JobConfig, RunParams
from fdpipe.job.rows import RowFormat
from fdpipe.job.schema import RunStamp
from fdpipe.methods import MethodSpec

log = logging.getLogger("fdpipe.job")
CPU_BATCH = 16  # ``auto`` off a GPU: memory does not bound the batch there, the budget does
MAX_AUTO_BATCH = 256


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


def auto_batch_size(explainer: Explainer, free_bytes: int) -> int:
    """The most images whose pass fits ``free_bytes`` beside the perturbation budget: one
    image's forward working set (``input_bytes``: the model at the run's precision) three times
    over (its activations, their gradients through the head, the methods' copies), once per
    method beyond the first for the maps and scores each keeps until the batch is copied out.
    An estimate: an out-of-memory error still halves the batch (``fdpipe.job.rows.fitting``)."""
    one = explainer.network.input_bytes(tuple(explainer.model.input_shape))
    per_image = (2 + len(explainer.methods)) * one
    spare = free_bytes - explainer.budget.bytes
    return max(1, min(MAX_AUTO_BATCH, spare // per_image))


def resolve_batch_size(batch_size: int | str, explainer: Explainer) -> int:
    """``batch_size`` as run: ``auto`` is found once, from the free memory of the explainer's
    GPU (16 on a CPU), and recorded in the run metadata like any batch size."""
    if batch_size == "auto":
        if explainer.device.type != "cuda":
            return CPU_BATCH
        free, _ = torch.cuda.mem_get_info(explainer.device)
        size = auto_batch_size(explainer, free)
        log.info("batch size auto: %d images (%.1f GiB free on %s)", size, free / (1 << 30),
                 explainer.device)  # fmt: skip
        return size
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch size {batch_size!r}: give a whole number of images >= 1, or auto")
    return batch_size


def decode_device(decode: str, explainer: Explainer) -> torch.device | None:
    """Where the run decodes its JPEGs (``--decode``): the model's device, or None for the CPU
    decoders alone. ``auto`` is the device on a GPU; ``device`` on a CPU model runs the same
    code on the CPU (torchvision's libjpeg decoder: how the tests cover it)."""
    if decode not in DECODES:
        raise ConfigError(f"--decode {decode!r}: choose from {', '.join(DECODES)}")
    own = isinstance(explainer.model.preprocess, Preprocess)  # a callable takes PIL images
    if decode == "cpu" or (decode == "auto" and not (own and explainer.device.type == "cuda")):
        return None
    if not own:
        raise ConfigError("--decode device needs the model's own preprocessing, not a callable")
    return explainer.device


def resolve_decode(decode: str, explainer: Explainer, engine: str) -> str:
    """``--decode`` as run (``cpu`` or ``device``), refused before any work if it cannot be;
    ``auto`` stays for Ray's actors, each resolving it on its own device."""
    device = decode_device(decode, explainer)
    if engine == "ray" and decode == "auto":
        return decode
    return "cpu" if device is None else "device"


def run_params(explainer: Explainer, config: JobConfig) -> RunParams:
    """What the rows depend on: a rerun must match the model fields."""
    model = explainer.model
    return RunParams(
        model=model.name,
        source=model.source,
        weights_id=model.weights_id,
        weights_file=(
            dict(zip(("path", "sha256"), model.weights_file, strict=True))
            if model.weights_file
            else None
        ),
        weights_map=model.weights_map,
        layer=model.layer,
        num_classes=model.num_classes,
        class_names=(
            None
            if model.class_names == default_class_names(model.num_classes)
            else model.class_names
        ),
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
            "backend": explainer.backend.ran(),  # what ran so far; refreshed at each commit
            "selected": explainer.backend.description,  # the engines chosen at build
            "runtime": config.runtime,
            "engine": config.engine,
            "shard": list(config.shard),
            "batch_size": config.batch_size,
            "decode": config.decode,
            "jpeg_decoder": decode_stage.jpeg_decoder().name if config.decode != "cpu" else None,
            "max_memory_bytes": explainer.budget.bytes,
            "input": str(config.input),
            "input_root": root,
        },
    }


def method_label(method: str | MethodSpec) -> str:
    return method.label if isinstance(method, MethodSpec) else MethodSpec.parse(method).label


def row_format(explainer: Explainer, config: JobConfig, stamp: RunStamp) -> RowFormat:
    """What every row of this run carries besides its image."""
    model = explainer.model
    return RowFormat(
        model.name,
        model.layer,
        model.class_names,
        stamp,
        model.preprocess.crop_box,
        config.save_weights,
    )


__all__ = [
    "CPU_BATCH",
    "MAX_AUTO_BATCH",
    "auto_batch_size",
    "decode_device",
    "job_explainer",
    "method_label",
    "resolve_batch_size",
    "resolve_decode",
    "row_format",
    "run_metadata",
    "run_params",
    "targets_label",
    "versions",
]
