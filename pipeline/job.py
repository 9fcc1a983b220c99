"""``fdpipe explain`` at dataset scale: stream images through the model into Parquet parts.

Decoding and preprocessing run on worker threads, a bounded number of images ahead of the model,
so memory stays flat whatever the dataset size. Rows reach the output in input order, in parts of
``part_size`` images; a rerun skips the images already in complete parts.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from time import perf_counter

import numpy as np
import pyarrow as pa
import torch
import torchvision
from fdpipe import __version__
from fdpipe.api import run_method
from fdpipe.export.models import DEFAULT_MODEL, LoadedModel, Preprocess, load_model
from fdpipe.images import ImageDecodeError, load_image
from fdpipe.inputs import InputItem, collect_inputs, select_shard
from fdpipe.kernels import make_method, prepare
from fdpipe.output import ImageInfo, OutputDataset, PartSink, TableBuilder
from fdpipe.progress import Progress, Summary
from fdpipe.runtime import select_backend
from torch import Tensor

log = logging.getLogger("fdpipe.job")

ENGINES = ("local", "ray")


class ConfigError(ValueError):
    """A job setting that cannot work, found before any image is read."""


@dataclass(frozen=True)
class JobConfig:
    input: Path  # directory, list file, or CSV / Parquet manifest
    output: Path  # directory of Parquet parts
    model: str = DEFAULT_MODEL
    layer: str | None = None
    weights: Path | None = None
    pretrained: bool = True  # False: seeded random weights (benchmarks, shape tests)
    artifacts: Path | None = None
    runtime: str = "auto"
    methods: dict[str, dict[str, object]] = field(default_factory=lambda: {"fdcam": {}})
    classes: tuple[int, ...] | None = None  # explicit target classes, else the top_k logits
    top_k: int = 1
    batch_size: int = 16
    workers: int = min(4, os.cpu_count() or 1)  # decode threads
    part_size: int = 256  # images per part file: the most work a kill can lose
    shard: tuple[int, int] = (0, 1)
    overwrite: bool = False
    save_weights: bool = False
    engine: str = "local"
    address: str | None = None  # Ray cluster; None starts a local Ray
    actors: int | None = None  # Ray model actors; None: one per GPU, else one per CPU
    progress: bool | None = None  # progress bar; None: when stderr is a terminal


@dataclass
class DecodedImage:
    info: ImageInfo
    tensor: Tensor | None  # preprocessed (3, H, W); None when decoding failed
    error: str | None
    seconds: float


def decode(item: InputItem, preprocess: Preprocess) -> DecodedImage:
    """Hash, decode and preprocess one file; any problem with it becomes an error message."""
    start = perf_counter()
    info = ImageInfo(item.key, None, None, None)
    try:
        with item.path.open("rb") as fh:
            info.sha256 = hashlib.file_digest(fh, "sha256").hexdigest()
        picture = load_image(item.path)
        info.width, info.height = picture.size
        tensor = preprocess(picture)
    except ImageDecodeError as exc:
        return DecodedImage(info, None, str(exc), perf_counter() - start)
    except OSError as exc:
        return DecodedImage(info, None, f"cannot read file: {exc}", perf_counter() - start)
    except Exception as exc:  # a decoder bug on one odd file must not stop a dataset run
        message = f"unexpected error while decoding: {type(exc).__name__}: {exc}"
        return DecodedImage(info, None, message, perf_counter() - start)
    return DecodedImage(info, tensor, None, perf_counter() - start)


def ordered_map(
    fn: Callable[[InputItem], DecodedImage], items: Iterable[InputItem], workers: int, ahead: int
) -> Iterator[DecodedImage]:
    """``map(fn, items)`` on a thread pool, in order, never more than ``ahead`` results held."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fdpipe-decode") as pool:
        queue: deque = deque()
        for item in items:
            queue.append(pool.submit(fn, item))
            if len(queue) >= ahead:
                yield queue.popleft().result()
        while queue:
            yield queue.popleft().result()


def batches(images: Iterable[DecodedImage], size: int) -> Iterator[list[DecodedImage]]:
    """Groups holding ``size`` decodable images; failed ones ride along in input order."""
    group: list[DecodedImage] = []
    usable = 0
    for image in images:
        group.append(image)
        usable += image.error is None
        if usable == size:
            yield group
            group, usable = [], 0
    if group:
        yield group


class Explainer:
    """The model, its backend and the methods: one per process (or Ray actor)."""

    def __init__(self, config: JobConfig) -> None:
        self.model: LoadedModel = load_model(
            config.model, layer=config.layer, weights=config.weights, pretrained=config.pretrained
        )
        self.backend = select_backend(
            self.model, artifacts=config.artifacts, runtime=config.runtime
        )
        self.methods = [make_method(name, **options) for name, options in config.methods.items()]
        self.classes = list(config.classes) if config.classes is not None else None
        n_classes = len(self.model.class_names)
        bad = [c for c in self.classes or [] if not 0 <= c < n_classes]
        if bad:
            raise ConfigError(f"class index {bad[0]} out of range: valid are 0..{n_classes - 1}")
        self.top_k = config.top_k
        self.save_weights = config.save_weights
        self.device = self.backend.network.device

    def params(self) -> dict[str, object]:
        """What the rows depend on: a resumed run must match these exactly."""
        return {
            "model": self.model.name,
            "weights_id": self.model.weights_id,
            "layer": self.model.layer,
            "preprocess": self.model.preprocess.describe(),
            "methods": {m.name: m.options() for m in self.methods},
            "classes": self.classes,
            "top_k": None if self.classes is not None else self.top_k,
            "save_weights": self.save_weights,
        }

    def explain(self, images: list[DecodedImage]) -> pa.Table:
        """Rows for ``images`` in their order: one per (image, method, class), one per failure."""
        usable = [image for image in images if image.error is None]
        results = self.run_methods(usable) if usable else {}
        builder = TableBuilder(self.model.name, self.model.layer)
        position = {id(image): b for b, image in enumerate(usable)}
        for image in images:
            if image.error is not None:
                builder.add_failed(image.info, image.error, image.seconds)
                continue
            b = position[id(image)]
            for name, (arrays, seconds) in results.items():
                for rank, class_index in enumerate(arrays["classes"][b]):
                    builder.add_explained(
                        image.info,
                        method=name,
                        class_rank=rank,
                        class_index=int(class_index),
                        class_name=self.model.class_names[class_index],
                        logit=float(arrays["logits"][b, rank]),
                        probability=float(arrays["probabilities"][b, rank]),
                        native_map=arrays["native"][b, rank],
                        weights=arrays["weights"][b, rank] if "weights" in arrays else None,
                        seconds=image.seconds + seconds,
                    )
        return builder.build()

    def run_methods(
        self, images: list[DecodedImage]
    ) -> dict[str, tuple[dict[str, np.ndarray], float]]:
        """Per method: its arrays and its per-image share of the batch time."""
        start = perf_counter()
        batch = torch.stack([image.tensor for image in images]).to(self.device)
        state = prepare(
            self.backend.network,
            batch,
            classes=self.classes,
            top_k=self.top_k,
            scorer=self.backend.scorer,
        )
        shared = (perf_counter() - start) / len(self.methods)
        results = {}
        for method in self.methods:
            start = perf_counter()
            explanation = run_method(method, state)
            arrays = {
                "classes": explanation.classes.cpu().numpy(),
                "logits": explanation.logits.float().cpu().numpy(),
                "probabilities": explanation.probabilities.float().cpu().numpy(),
                "native": explanation.native.float().cpu().numpy(),
            }
            if self.save_weights and explanation.weights is not None:
                arrays["weights"] = explanation.weights.float().cpu().numpy()
            seconds = (perf_counter() - start + shared) / len(images)
            results[method.name] = (arrays, seconds)
        return results

    def metadata(self, config: JobConfig, root: Path) -> dict[str, object]:
        """Everything recorded in each part file under the ``fdpipe`` key."""
        return {
            "params": self.params(),
            "versions": {
                "fdpipe": __version__,
                "torch": torch.__version__,
                "torchvision": torchvision.__version__,
                "pyarrow": pa.__version__,
                "python": platform.python_version(),
            },
            "run": {
                "backend": self.backend.description,
                "runtime": config.runtime,
                "engine": config.engine,
                "shard": list(config.shard),
                "batch_size": config.batch_size,
                "input": str(config.input),
                "input_root": str(root),
            },
        }


def run_local(
    config: JobConfig,
    explainer: Explainer,
    pending: list[InputItem],
    sink: PartSink,
    progress: Progress,
) -> None:
    read = partial(decode, preprocess=explainer.model.preprocess)
    ahead = 2 * config.batch_size + config.workers  # bounded prefetch: memory independent of N
    for group in batches(ordered_map(read, pending, config.workers, ahead), config.batch_size):
        sink.add(explainer.explain(group))
        failed = sum(image.error is not None for image in group)
        progress.update(len(group) - failed, failed)


def run_job(config: JobConfig) -> Summary:
    """Explain every image of ``config.input`` (this shard) not yet in ``config.output``."""
    inputs = collect_inputs(config.input)
    selected = select_shard(inputs.items, *config.shard)
    explainer = Explainer(config)
    dataset = OutputDataset(config.output, config.shard)
    if config.overwrite:
        dataset.clear()
    existing = dataset.existing(explainer.params())
    pending = [item for item in selected if item.key not in existing.done]
    skipped = len(selected) - len(pending)
    failed_before = len(existing.failed.intersection(item.key for item in selected))
    log.info(
        "%d images in %s (shard %d/%d: %d), %d already done, %d to go; %s",
        len(inputs.items),
        config.input,
        *config.shard,
        len(selected),
        skipped,
        len(pending),
        explainer.backend.description,
    )
    sink = PartSink(dataset, config.part_size, explainer.metadata(config, inputs.root))
    progress = Progress(len(pending), bar=config.progress)
    try:
        if config.engine == "ray":
            from fdpipe.ray_engine import run_ray  # optional dependency

            run_ray(config, pending, sink, progress)
        else:
            run_local(config, explainer, pending, sink, progress)
        sink.close()
    finally:
        seconds = progress.close()
    return Summary(progress.done, progress.failed, skipped, failed_before, seconds)


__all__ = [
    "ENGINES",
    "ConfigError",
    "DecodedImage",
    "Explainer",
    "JobConfig",
    "batches",
    "decode",
    "ordered_map",
    "run_job",
    "run_local",
]
