"""``fdpipe explain`` at dataset scale: the job's stages in a row.

    setup -> inputs -> plan -> decode -> rows -> parts

``setup`` builds the ``Explainer`` and what every row carries, once; ``inputs`` lists the
source's entries; ``plan`` compares them with what the output holds, so a rerun explains only
what is new (entries without rows, changed bytes, failures to retry, methods or classes to add;
``prune`` marks entries that are gone); an engine (``local_engine`` here, ``ray_engine`` on a Ray
cluster) runs ``decode`` and ``rows`` over the pending entries, bounded in memory, in input order;
``parts`` commits the rows to the output's Delta table (``table``) in parts of ``part_size``
images. Every run writes a record (``record``) however it ends.
"""

from __future__ import annotations

import errno
import logging
import time
from contextlib import nullcontext
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from fdpipe.api import Explainer
from fdpipe.errors import FdpipeError
from fdpipe.export.request import ModelError
from fdpipe.job.config import ConfigError, JobConfig
from fdpipe.job.inputs import Entry, InputError, InputMissing, Source, shard_of
from fdpipe.job.local_engine import run_local
from fdpipe.job.lock import output_lock
from fdpipe.job.parts import (
    STORAGE_ERRNOS,
    PartSink,
    ResumeError,
    StorageError,
    check_table,
    image_states,
)
from fdpipe.job.plan import plan_run
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
from fdpipe.job.remote import check_output
from fdpipe.job.rows import pruned_rows
from fdpipe.job.schema import RunStamp
from fdpipe.job.setup import (
    job_explainer,
    method_label,
    resolve_batch_size,
    resolve_decode,
    row_format,
    run_metadata,
    run_params,
    targets_label,
    versions,
)
from fdpipe.job.sources import open_source
from fdpipe.job.table import ResultsTable, TableError, image_keys

if TYPE_CHECKING:
    from fdpipe.job.faithfulness import SampleTap

log = logging.getLogger("fdpipe.job")

# A run refused before any work: exit 2 with one line, and a record saying why.
REFUSALS = (ConfigError, InputError, ModelError, ResumeError, TableError)


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
                "decode": config.decode,
                "part_size": config.part_size,
            },
            "versions": versions(),
        },
        config.storage_options,
    )
    try:
        if isinstance(config.output, str):  # a store: named before the input and the model
            check_output(config.output, config.storage_options)
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
        config = replace(
            config,
            batch_size=resolve_batch_size(config.batch_size, explainer),
            decode=resolve_decode(config.decode, explainer, config.engine),
        )
        # One run per (output, shard) in a folder; a store has no lock that a killed run drops:
        # there the table's conditional put keeps concurrent commits apart (job.remote).
        store = isinstance(config.output, str)
        with nullcontext() if store else output_lock(config.output, config.shard):
            return _run_locked(config, record, clock, source, entries, explainer)
    except REFUSALS as exc:
        record.end("refused", EXIT_USAGE, str(exc))
        raise
    except StorageError as exc:  # a store that fails a commit
        record.end("failed", EXIT_STORAGE, str(exc))
        raise
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS:
            record.end("failed", EXIT_FAILED, f"{type(exc).__name__}: {exc}")
            raise
        reason = exc.strerror or str(exc)
        record.end("failed", EXIT_STORAGE, reason)
        raise StorageError(
            f"cannot write to {config.output}: {reason} ({errno.errorcode[exc.errno]}); "
            "the parts committed so far are kept: make room and rerun to continue"
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
    params = run_params(explainer, config)
    table = ResultsTable(config.output, config.storage_options)
    table.refuse_legacy()
    table.set_aside_damaged({"params": params.as_json()})
    if config.overwrite:
        clear(table, config.shard, {"params": params.as_json()})
    check_table(table, params)
    states, newest_run = image_states(table)
    targets = targets_label(config)
    labels = [method_label(m) for m in config.methods]
    plan = plan_run(
        source,
        entries,
        states,
        labels,
        targets,
        shard=config.shard,
        retry=config.retry,
        workers=config.workers,
    )
    run_id = next_run_id(max(newest_run, newest_record(config.output, config.storage_options)))
    stamp = RunStamp(run_id, targets)
    metadata = run_metadata(params, explainer, config, source.root, run_id)
    preprocessing = explainer.model.preprocess.summary()
    log.info("preprocessing: %s", preprocessing)  # what every image goes through, stated once
    try:  # before any work: an output or --summary that cannot be written is a setting error
        record.write(
            run_id=run_id,
            params=metadata["params"],
            preprocessing=preprocessing,
            run=metadata["run"],
            status="running",
        )
    except OSError as exc:
        raise ConfigError(f"cannot write the run record: {exc}") from exc
    log.info(
        "%d images in %s (shard %d/%d: %d): %d new, %d changed, %d to retry, %d to add "
        "methods or classes to, %d skipped, %d gone%s; %s",
        len(entries),
        config.input,
        *config.shard,
        plan.listed,
        plan.new,
        plan.changed,
        plan.retried,
        plan.added,
        plan.skipped,
        len(plan.gone),
        "" if config.prune else " (kept: no --prune)",
        explainer.backend.description,
    )
    # Only the methods some pending image lacks run; the rows of the others stay current.
    explainer.methods = {k: m for k, m in explainer.methods.items() if k in plan.labels}
    sink = PartSink(table, config.part_size, metadata, explainer.backend.ran)
    if config.evaluate_sample:
        from fdpipe.job.faithfulness import draw

        sink.watch = tap = draw(plan.pending, config.evaluate_sample, config.evaluate_seed)
    progress = Progress(len(plan.pending), bar=config.progress)
    form = row_format(explainer, config, stamp)
    try:
        if config.prune and plan.gone:
            sink.add(pruned_rows(form, plan.gone))
        if config.engine == "ray":
            from fdpipe.job.ray_engine import run_ray  # optional dependency

            needed = tuple(m for m in config.methods if method_label(m) in plan.labels)
            placement = run_ray(replace(config, methods=needed), source, plan, stamp, sink,
                                progress)  # fmt: skip
            record.fields["placement"] = {"images_per_ray_node": placement}
        else:
            run_local(config, source, plan, explainer, form, sink, progress)
        sink.close()
    finally:
        sink.note_backend()  # the record shares ``metadata["run"]``
        seconds = progress.close()
        record.fields["commits"] = sink.written  # the table versions this run committed
        record.fields["memory"] = explainer.budget.record()  # the chunks the budget gave
    if config.evaluate_sample:
        record.fields["evaluation"] = faithfulness(config, tap, explainer, source, plan.pending)
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
        pruned=len(plan.gone) if config.prune else 0,
        failures=progress.failures,
    )
    finish(record, summary, clock)
    return summary


def faithfulness(
    config: JobConfig, tap: SampleTap, explainer: Explainer, source: Source, pending: list[Entry]
) -> dict[str, object]:
    """``--evaluate-sample``: the sample's scores, or why there are none (the run's rows are
    committed by now: an evaluation that fails costs the record's scores, never the run)."""
    from fdpipe.job.faithfulness import evaluate_sample

    try:
        return evaluate_sample(
            tap, explainer, source, pending, asked=config.evaluate_sample,
            seed=config.evaluate_seed,
        )  # fmt: skip
    except (FdpipeError, OSError, RuntimeError, ValueError) as exc:
        log.warning("faithfulness sample not scored: %s: %s", type(exc).__name__, exc)
        return {"asked": config.evaluate_sample, "seed": config.evaluate_seed,
                "error": f"{type(exc).__name__}: {exc}"}  # fmt: skip


def clear(table: ResultsTable, shard: tuple[int, int], record: dict[str, object]) -> None:
    """``--overwrite``: remove this shard's rows (every row for an unsharded run), one commit."""
    index, count = shard
    if count == 1:
        table.delete(None, record | {"cleared": True})
        return
    paths = set(image_keys(table.rows(columns=["image_path"])))
    table.delete([p for p in paths if shard_of(p, count) == index], record)


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


__all__ = ["REFUSALS", "run_job"]
