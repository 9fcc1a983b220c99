"""``fdpipe explain`` at dataset scale: stream images through the model into Parquet parts.

Decoding and preprocessing run on worker threads, a bounded number of images ahead of the model,
so memory stays flat whatever the dataset size. Rows reach the output in input order, in parts of
``part_size`` images; a rerun skips the images already in complete parts.
"""

from __future__ import annotations

import logging
from functools import partial

from fdpipe.api import Explainer
from fdpipe.job.config import JobConfig
from fdpipe.job.decode import batches, decode, ordered_map
from fdpipe.job.inputs import InputItem, collect_inputs, select_shard
from fdpipe.job.parts import OutputDataset, PartSink
from fdpipe.job.progress import Progress, Summary
from fdpipe.job.rows import explain_rows, job_explainer, run_metadata, run_params

log = logging.getLogger("fdpipe.job")


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
        sink.add(explain_rows(explainer, group, config.save_weights))
        failed = sum(image.error is not None for image in group)
        progress.update(len(group) - failed, failed)


def run_job(config: JobConfig) -> Summary:
    """Explain every image of ``config.input`` (this shard) not yet in ``config.output``."""
    inputs = collect_inputs(config.input)
    selected = select_shard(inputs.items, *config.shard)
    explainer = job_explainer(config)
    dataset = OutputDataset(config.output, config.shard)
    if config.overwrite:
        dataset.clear()
    existing = dataset.existing(run_params(explainer, config))
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
    sink = PartSink(dataset, config.part_size, run_metadata(explainer, config, inputs.root))
    progress = Progress(len(pending), bar=config.progress)
    try:
        if config.engine == "ray":
            from fdpipe.job.ray_engine import run_ray  # optional dependency

            run_ray(config, pending, sink, progress)
        else:
            run_local(config, explainer, pending, sink, progress)
        sink.close()
    finally:
        seconds = progress.close()
    return Summary(progress.done, progress.failed, skipped, failed_before, seconds)


__all__ = ["run_job", "run_local"]
