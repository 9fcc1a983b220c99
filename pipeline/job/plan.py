"""The plan stage: what a run does with this shard of the source's entries.

A rerun explains only what the output lacks: entries without rows (new), entries whose bytes
changed (their change token moved and their SHA-256 differs), entries whose newest rows failed
(retried, unless ``retry`` is off), and methods or classes an entry has no rows of (added). Keys
with rows but no entry any more are gone (``--prune`` marks them). Keys are the source's, so the
plan is the same for every source.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fdpipe.job.current import covers
from fdpipe.job.inputs import (
    MAX_FILE_BYTES,
    ChangeToken,
    Entry,
    EntryError,
    Source,
    select_shard,
    shard_of,
)
from fdpipe.job.parts import ImageState


@dataclass
class Plan:
    """What a run will do with this shard's entries."""

    listed: int  # entries in this shard
    pending: list[Entry]
    tokens: dict[str, ChangeToken]  # key -> change token of the pending entries
    labels: set[str]  # the method labels some pending image needs
    new: int = 0
    changed: int = 0
    retried: int = 0
    added: int = 0
    skipped: int = 0
    failed_before: int = 0
    gone: list[str] = field(default_factory=list)  # keys with rows but no entry (to prune)


def entry_sha256(source: Source, entry: Entry) -> str | None:
    try:
        return hashlib.sha256(source.open(entry, MAX_FILE_BYTES)).hexdigest()
    except (EntryError, OSError):
        return None  # decoding will report why


def plan_run(
    source: Source,
    entries: list[Entry],
    states: dict[str, ImageState],
    labels: list[str],
    targets: str,
    *,
    shard: tuple[int, int] = (0, 1),
    retry: bool = True,
    workers: int = 1,
) -> Plan:
    """Compare this shard of ``entries`` with what the output holds (``states``, by key) for the
    method ``labels`` and ``targets`` label: an entry is rehashed only when its change token moved.
    """
    items = select_shard(source, entries, *shard)

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

    plan = Plan(len(items), [], {}, set())
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fdpipe-stat") as pool:
        for item, (token, changed) in zip(items, pool.map(look, items), strict=True):
            state = states.get(item.key)
            missing = set(labels)
            if state is None:
                plan.new += 1
            else:
                if not changed:
                    missing = {
                        label
                        for label in labels
                        if not any(m == label and covers(t, targets) for m, t in state.done)
                    }
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
    present = {entry.key for entry in entries}
    plan.gone = sorted(
        key
        for key in states
        if key not in present and shard_of(source.shard_key(key), shard[1]) == shard[0]
    )
    return plan


__all__ = ["Plan", "entry_sha256", "plan_run"]
