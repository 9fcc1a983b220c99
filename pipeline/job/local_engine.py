"""``--engine local``: the stages in this process, decoding on threads ahead of the model.

Entries are read and decoded on ``workers`` threads, in input order, a bounded number ahead of
the model (memory stays flat whatever the dataset size); with device decoding, each batch's
JPEGs are decoded together on the model's device; each batch of decodable images becomes rows
that the sink cuts into parts.
"""

from __future__ import annotations

from fdpipe.api import Explainer
from fdpipe.job.config import JobConfig
from fdpipe.job.decode import DecodedImage, batches, decode, decode_on_device, ordered_map
from fdpipe.job.inputs import Entry, Source
from fdpipe.job.parts import PartSink
from fdpipe.job.plan import Plan
from fdpipe.job.progress import Progress
from fdpipe.job.rows import RowFormat, explain_rows
from fdpipe.job.setup import decode_device


def run_local(
    config: JobConfig,
    source: Source,
    plan: Plan,
    explainer: Explainer,
    form: RowFormat,
    sink: PartSink,
    progress: Progress,
) -> None:
    """Explain ``plan.pending`` into ``sink`` with ``explainer`` (its methods: those needed)."""

    device = decode_device(config.decode, explainer)
    preprocess = explainer.model.preprocess

    def read(entry: Entry) -> DecodedImage:
        image = decode(entry, source, preprocess, config.max_pixels, leave_jpegs=device is not None)
        image.info.size, image.info.mtime_ns = plan.tokens.get(entry.key, (None, None))
        return image

    size = int(config.batch_size)  # "auto" was resolved by run_job
    ahead = 2 * size + config.workers  # bounded prefetch: memory independent of N
    for group in batches(ordered_map(read, plan.pending, config.workers, ahead), size):
        if device is not None:
            decode_on_device(group, preprocess, device, config.max_pixels)
        rows = explain_rows(explainer, form, group)
        sink.add(rows)
        progress.record(rows)


__all__ = ["run_local"]
