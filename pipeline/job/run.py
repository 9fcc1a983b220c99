"""``fdpipe explain`` at dataset scale: stream images through the model into Parquet parts.

Decoding and preprocessing run on worker threads, a bounded number of images ahead of the model,
so memory stays flat whatever the dataset size. Rows reach the output in input order, in parts of
``part_size`` images. A rerun explains only what is new: paths without rows, files whose content
changed, images that failed (unless ``retry`` is off) and methods or classes an image has no rows
of; ``prune`` marks inputs that are gone. Every run writes a record to ``OUTPUT/_runs/``.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from fdpipe.api import Explainer
from fdpipe.export.request import ModelError
from fdpipe.job.config import ConfigError, JobConfig
from fdpipe.job.decode import DecodedImage, batches, decode, ordered_map
from fdpipe.job.inputs import (
    MAX_FILE_BYTES,
    ChangeToken,
    Entry,
    EntryError,
    InputError,
    InputMissing,
    Source,
    open_source,
    select_shard,
    shard_of,
)
from fdpipe.job.lock import output_lock
from fdpipe.job.parts import (
    STORAGE_ERRNOS,
    ImageState,
    OutputDataset,
    PartSink,
    ResumeError,
    StorageError,
)
from fdpipe.job.progress import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_STORAGE,
    EXIT_USAGE,
    Progress,
    Summary,
    peak_memory_bytes,
)
from fdpipe.job.record import RunRecord, newest_record, next_run_id
from fdpipe.job.rows import (
    explain_rows,
    job_explainer,
    run_metadata,
    run_params,
    targets_label,
    versions,
)
from fdpipe.job.schema import RunStamp, TableBuilder
from fdpipe.methods import MethodSpec

log = logging.getLogger("fdpipe.job")

# A run refused before any work: exit 2 with one line, and a record saying why.
REFUSALS = (ConfigError, InputError, ModelError, ResumeError)


@dataclass
class Plan:
    """What a run will do with this shard's inputs."""

    pending: list[Entry]
    tokens: dict[str, ChangeToken]  # key -> change token of the pending entries
    labels: set[str]  # the method labels some pending image needs
    new: int = 0
    changed: int = 0
    retried: int = 0
    added: int = 0
    skipped: int = 0
    failed_before: int = 0


def entry_sha256(source: Source, entry: Entry) -> str | None:
    try:
        return hashlib.sha256(source.open(entry, MAX_FILE_BYTES)).hexdigest()
    except (EntryError, OSError):
        return None  # decoding will report why


def plan_run(
    source: Source,
    items: list[Entry],
    states: dict[str, ImageState],
    labels: list[str],
    targets: str,
    *,
    retry: bool,
    workers: int,
) -> Plan:
    """Compare the input with the output: an entry is rehashed only when its change token moved."""

    def look(item: Entry) -> tuple[ChangeToken | None, bool]:
        token = source.token(item)
        state = states.get(item.key)
        if state is None:
            return token, True
        if token is not None and (state.size, state.mtime_ns) == token and state.sha256:
            return token, False
        # No hash now and none before (a broken link, a FIFO): the same failure, not new content
        sha = entry_sha256(source, item) if token is not None else None
        return token, sha != state.sha256

    plan = Plan([], {}, set())
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fdpipe-stat") as pool:
        for item, (token, changed) in zip(items, pool.map(look, items), strict=True):
            state = states.get(item.key)
            missing = set(labels)
            if state is None:
                plan.new += 1
            else:
                if not changed:
                    missing = {label for label in labels if (label, targets) not in state.done}
                if not missing:
                    plan.skipped += 1
                    continue
                if state.failed and retry:
                    plan.retried += 1
                elif state.failed and not changed:  # --no-retry: the same bytes failed before
                    plan.skipped += 1
                    plan.failed_before += 1
                    continue
                elif changed:
                    plan.changed += 1
                else:
                    plan.added += 1
            plan.pending.append(item)
            plan.labels |= missing
            if token is not None:
                plan.tokens[item.key] = token
    return plan


def method_label(method: str | MethodSpec) -> str:
    return method.label if isinstance(method, MethodSpec) else MethodSpec.parse(method).label


def run_local(
    config: JobConfig,
    source: Source,
    explainer: Explainer,
    plan: Plan,
    stamp: RunStamp,
    sink: PartSink,
    progress: Progress,
) -> None:
    def read(item: Entry) -> DecodedImage:
        image = decode(item, source, explainer.model.preprocess, max_pixels=config.max_pixels)
        image.info.size, image.info.mtime_ns = plan.tokens.get(item.key, (None, None))
        return image

    ahead = 2 * config.batch_size + config.workers  # bounded prefetch: memory independent of N
    for group in batches(ordered_map(read, plan.pending, config.workers, ahead), config.batch_size):
        rows = explain_rows(explainer, group, stamp, config.save_weights)
        sink.add(rows)
        progress.record(rows)


def run_job(config: JobConfig) -> Summary:
    """Explain what ``config.output`` lacks of ``config.input`` (this shard); write a run record
    however the run ends."""
    clock = time.perf_counter()
    record = RunRecord(
        config.output,
        config.summary,
        {
            "command": config.command,  # the command line, where the CLI started the run
            "input": str(config.input),
            "output": str(config.output),
            "shard": list(config.shard),
            "options": {
                "retry": config.retry,
                "prune": config.prune,
                "overwrite": config.overwrite,
                "engine": config.engine,
                "batch_size": config.batch_size,
                "part_size": config.part_size,
            },
            "versions": versions(),
        },
    )
    try:
        source = open_source(config.input, config.target_column, config.storage_options)
        try:
            entries: list[Entry] | None = source.entries()
        except InputMissing:
            entries = None
        if not entries:
            summary = Summary(0, 0, 0, 0, time.perf_counter() - clock, empty=True)
            summary.allow_empty = config.allow_empty
            log.warning("input %s is %s: nothing to do", config.input, "missing"
                        if entries is None else "empty")  # fmt: skip
            try:
                finish(record, summary, clock)
            except OSError as exc:  # an unmounted output too: exit 3 stays the answer
                log.warning("cannot write the run record: %s", exc)
            return summary
        explainer = job_explainer(config)
        with output_lock(config.output, config.shard):  # one run per (output, shard)
            return _run_locked(config, record, clock, source, entries, explainer)
    except REFUSALS as exc:
        record.end("refused", EXIT_USAGE, str(exc))
        raise
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS:
            record.end("failed", EXIT_FAILED, f"{type(exc).__name__}: {exc}")
            raise
        reason = exc.strerror or str(exc)
        record.end("failed", EXIT_STORAGE, reason)
        raise StorageError(
            f"cannot write to {config.output}: {reason} ({errno.errorcode[exc.errno]}); "
            "the parts written so far are kept: make room and rerun to continue"
        ) from exc
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (``Terminated``)
        record.end("interrupted", getattr(exc, "exit_code", EXIT_INTERRUPTED))
        raise
    except Exception as exc:
        record.end("failed", EXIT_FAILED, f"{type(exc).__name__}: {exc}")
        raise


def _run_locked(
    config: JobConfig,
    record: RunRecord,
    clock: float,
    source: Source,
    entries: list[Entry],
    explainer: Explainer,
) -> Summary:
    selected = select_shard(source, entries, *config.shard)
    params = run_params(explainer, config)
    dataset = OutputDataset(config.output, config.shard)
    if config.overwrite:
        dataset.clear()
    dataset.discard_temp_files()
    dataset.check(params)
    states, newest_run = dataset.images()
    targets = targets_label(config)
    labels = [method_label(m) for m in config.methods]
    plan = plan_run(
        source, selected, states, labels, targets, retry=config.retry, workers=config.workers
    )
    present = {item.key for item in entries}
    gone = sorted(
        key
        for key in states
        if key not in present
        and shard_of(source.shard_key(key), config.shard[1]) == config.shard[0]
    )
    run_id = next_run_id(max(newest_run, newest_record(config.output)))
    stamp = RunStamp(run_id, targets)
    metadata = run_metadata(params, explainer, config, source.root, run_id)
    try:  # before any work: an output or --summary that cannot be written is a setting error
        record.write(
            run_id=run_id, params=metadata["params"], run=metadata["run"], status="running"
        )
    except OSError as exc:
        raise ConfigError(f"cannot write the run record: {exc}") from exc
    log.info(
        "%d images in %s (shard %d/%d: %d): %d new, %d changed, %d to retry, %d to add "
        "methods or classes to, %d skipped, %d gone%s; %s",
        len(entries),
        config.input,
        *config.shard,
        len(selected),
        plan.new,
        plan.changed,
        plan.retried,
        plan.added,
        plan.skipped,
        len(gone),
        "" if config.prune else " (kept: no --prune)",
        explainer.backend.description,
    )
    # Only the methods some pending image lacks run; the rows of the others stay current.
    explainer.methods = {k: m for k, m in explainer.methods.items() if k in plan.labels}
    sink = PartSink(dataset, config.part_size, metadata)
    progress = Progress(len(plan.pending), bar=config.progress)
    try:
        if config.prune and gone:
            tombstones = TableBuilder(explainer.model.name, explainer.model.layer, stamp)
            for key in gone:
                tombstones.add_pruned(key)
            sink.add(tombstones.build())
        if config.engine == "ray":
            from fdpipe.job.ray_engine import run_ray  # optional dependency

            needed = tuple(m for m in config.methods if method_label(m) in plan.labels)
            placement = run_ray(replace(config, methods=needed), source, plan, stamp, sink,
                                progress)  # fmt: skip
            record.fields["placement"] = {"images_per_ray_node": placement}
        else:
            run_local(config, source, explainer, plan, stamp, sink, progress)
        sink.close()
    finally:
        seconds = progress.close()
        record.fields["parts"] = [path.name for path in sink.written]
        record.fields["memory"] = explainer.budget.record()  # the chunks the budget gave
    summary = Summary(
        progress.done,
        progress.failed,
        plan.skipped,
        plan.failed_before,
        seconds,
        new=plan.new,
        changed=plan.changed,
        retried=plan.retried,
        added=plan.added,
        pruned=len(gone) if config.prune else 0,
        failures=progress.failures,
    )
    finish(record, summary, clock)
    return summary


def finish(record: RunRecord, summary: Summary, clock: float) -> None:
    """The record of a run that ran to its end."""
    record.write(
        status="empty" if summary.empty else "complete",
        finished=datetime.now(UTC).isoformat(),
        exit_code=summary.exit_code,
        counts=summary.counts(),
        failures=summary.failures,
        timings={
            "seconds": time.perf_counter() - clock,
            "explain_seconds": summary.seconds,
            "images_per_second": summary.images_per_second,
        },
        peak_memory_bytes=peak_memory_bytes(),
    )


__all__ = ["REFUSALS", "Plan", "plan_run", "run_job", "run_local"]
