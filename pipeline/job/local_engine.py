"""``--engine local``: the stages in this process, decoding on threads ahead of the model.

Entries are read and decoded on ``workers`` threads, in input order, a bounded number ahead of
the model (memory stays flat whatever the dataset size). One batch ahead of the one being
explained is sent to the model's device (``feed``: its JPEGs decoded there with device decoding,
its host tensors copied from pinned memory on a stream of their own), so on a GPU that work
overlaps the current batch's compute. Each batch's explanations become rows that the sink cuts
into parts on a writer thread, while this one explains the next batch: the rows' encoding and the
parts' commits stay off the device's critical path (one batch in the writer's hands at most).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

from fdpipe.api import Explainer
from fdpipe.job import rows as stage
from fdpipe.job.config import JobConfig
from fdpipe.job.decode import DecodedImage, batches, decode, decode_on_device, ordered_map
from fdpipe.job.feed import Feeder, Sent, one_ahead
from fdpipe.job.inputs import Entry, Source
from fdpipe.job.parts import PartSink
from fdpipe.job.plan import Plan
from fdpipe.job.progress import Progress
from fdpipe.job.rows import HostExplanation, RowFormat
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

    def on_device(group: list[DecodedImage]) -> None:
        decode_on_device(group, preprocess, explainer.device, config.max_pixels)

    step = on_device if device is not None else None
    feeder = Feeder(explainer.device)
    size = int(config.batch_size)  # "auto" was resolved by run_job
    ahead = 2 * size + config.workers  # bounded prefetch: memory independent of N
    groups = batches(ordered_map(read, plan.pending, config.workers, ahead), size)

    def write(group: list[DecodedImage], explained: list[HostExplanation]) -> None:
        rows = stage.batch_rows(form, group, explained)
        sink.add(rows)
        progress.record(rows)

    sent: Sent | None = None
    writing: Future[None] | None = None
    # Leaving the block waits for the write in flight, however the loop ends.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fdpipe-write") as writer:
        for group, following in one_ahead(groups):
            if sent is None:  # the first batch
                sent = feeder.send(group, step)
            upcoming = None if following is None else feeder.send(following, step)
            sent.wait()
            explained = stage.explain_batch(explainer, group, form.save_weights, form.fit)
            if writing is not None:
                writing.result()  # the batch before's rows: its error is the run's
            writing = writer.submit(write, group, explained)
            sent = upcoming
        if writing is not None:
            writing.result()


__all__ = ["run_local"]
