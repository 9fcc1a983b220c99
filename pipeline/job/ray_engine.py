"""``--engine ray``: the same job on Ray Data, one model actor per GPU (or CPU) worker.

The driver keeps the resume bookkeeping and writes the parts: actors return row tables in input
order (``preserve_order``), and the driver feeds them to the same ``PartSink`` as the local engine,
so the output layout and resume semantics are identical.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import torch
from fdpipe.job.config import JobConfig
from fdpipe.job.decode import DecodedImage, decode, decode_on_device
from fdpipe.job.inputs import Entry, Source
from fdpipe.job.parts import PartSink, image_starts
from fdpipe.job.plan import Plan
from fdpipe.job.progress import Progress
from fdpipe.job.ray_files import pack, unpack
from fdpipe.job.rows import explain_rows
from fdpipe.job.schema import RunStamp
from fdpipe.job.setup import decode_device, job_explainer, row_format

log = logging.getLogger("fdpipe.ray")
NODE_COLUMN = "_ray_node"  # added by the actors, removed by the driver
BACKEND_COLUMN = "_ray_backend"  # the engine paths that ran in the actor (``Backend.ran``)
ACTOR_START_SECONDS = 600


class ExplainActor:
    """Holds one model; decodes a batch of paths on a few threads and explains it. Its model
    files come with the job (``ray_files``), its images from the source: no driver path is read.
    Each row table it returns names its node (``NODE_COLUMN``), which the driver counts."""

    def __init__(
        self,
        config: JobConfig,
        files: ray.ObjectRef,
        source: Source,
        stamp: RunStamp,
        threads: int,
    ) -> None:
        torch.set_num_threads(threads)
        self.folder = tempfile.TemporaryDirectory(prefix="fdpipe-actor-")
        config = unpack(config, ray.get(files), Path(self.folder.name))
        self.node = ray.get_runtime_context().get_node_id()
        self.explainer = job_explainer(config)
        self.form = row_format(self.explainer, config, stamp)
        self.pool = ThreadPoolExecutor(max_workers=config.workers)
        self.device = decode_device(config.decode, self.explainer)
        self.max_pixels = config.max_pixels
        self.read = partial(
            decode,
            source=source,
            preprocess=self.explainer.model.preprocess,
            max_pixels=config.max_pixels,
            leave_jpegs=self.device is not None,
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        targets = [
            str(t) if has else None
            for t, has in zip(batch["target"], batch["has_target"], strict=True)
        ]
        items = [
            Entry(str(k), os.fsdecode(where), t)
            for k, where, t in zip(batch["key"], batch["location"], targets, strict=True)
        ]
        decoded: list[DecodedImage] = list(self.pool.map(self.read, items))
        for image, size, version in zip(decoded, batch["size"], batch["version"], strict=True):
            image.info.size, image.info.mtime_ns = (
                (int(size), int(version)) if size >= 0 else (None, None)
            )
        if self.device is not None:
            preprocess = self.explainer.model.preprocess
            decode_on_device(decoded, preprocess, self.device, self.max_pixels)
        rows = explain_rows(self.explainer, self.form, decoded)
        rows = rows.append_column(NODE_COLUMN, pa.array([self.node] * rows.num_rows))
        ran = self.explainer.backend.ran()
        return rows.append_column(BACKEND_COLUMN, pa.array([ran] * rows.num_rows))


def actor_resources(config: JobConfig) -> tuple[int, float, float]:
    """(actors, CPUs per actor, GPUs per actor) from the cluster's resources."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", 1)))
    actors = config.actors or gpus or cpus

    def share(total: int) -> float:  # whole units each, fractions when actors outnumber them
        return float(total // actors) if total >= actors else total / actors

    return actors, share(cpus), share(gpus)


def run_ray(
    config: JobConfig,
    source: Source,
    plan: Plan,
    stamp: RunStamp,
    sink: PartSink,
    progress: Progress,
) -> dict[str, int]:
    """``config.methods``: the methods the pending images need. Returns the images explained
    per Ray node id (the run record's placement)."""
    placement: Counter[str] = Counter()
    ran: set[str] = set()  # each actor's engine paths
    before = sink.backend
    sink.backend = lambda: " | ".join(sorted(ran)) if ran or before is None else before()
    if not plan.pending:
        return dict(placement)
    if not ray.is_initialized():
        ray.init(address=config.address, include_dashboard=False, log_to_driver=False)
    actors, cpus, gpus = actor_resources(config)
    log.info("ray: %d actors x (%g CPU, %g GPU)", actors, cpus, gpus)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # parts must cover contiguous input runs
    context.enable_progress_bars = False
    # Every actor loads its model before the first batch is handed out, so batches spread over
    # all of them (and a cluster that cannot place them fails instead of waiting forever).
    context.wait_for_min_actors_s = ACTOR_START_SECONDS
    items = ray.data.from_items(
        [
            {
                "key": item.key,
                "location": os.fsencode(item.location),  # bytes: a file name need not be UTF-8
                "size": plan.tokens.get(item.key, (-1, -1))[0],
                "version": plan.tokens.get(item.key, (-1, -1))[1],
                # Strings only: a column of None does not survive Ray's numpy batches.
                "target": item.target or "",
                "has_target": item.target is not None,
            }
            for item in plan.pending
        ]
    )
    shipped, files = pack(config)
    rows = items.map_batches(
        ExplainActor,
        fn_constructor_kwargs={
            "config": shipped,
            "files": ray.put(files),
            "source": source,
            "stamp": stamp,
            "threads": max(1, int(cpus)),
        },
        batch_size=int(config.batch_size),  # "auto" was resolved by run_job, on the driver
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus,
        num_gpus=gpus,
    )
    for table in rows.iter_batches(batch_size=None, batch_format="pyarrow"):
        assert isinstance(table, pa.Table)  # batch_format="pyarrow"
        nodes = table.column(NODE_COLUMN).take(image_starts(table)).to_pylist()
        placement.update(str(node) for node in nodes)  # one count per image
        ran.update(str(r) for r in pc.unique(table.column(BACKEND_COLUMN)).to_pylist())
        table = table.drop_columns([NODE_COLUMN, BACKEND_COLUMN])
        sink.add(table)
        progress.record(table)
    return dict(placement)


__all__ = ["ExplainActor", "actor_resources", "run_ray"]
