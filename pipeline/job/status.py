"""One night's status over every shard of an output, from the run records in ``OUTPUT/_runs/``.

A nightly job split over ``--shard i/n`` leaves n records; monitoring wants one answer. The night
is the newest run's shard count and the runs that started within ``window`` of the newest one;
each shard's newest record in that window decides the shard. The night is ``ok`` (exit 0) when
every shard completed without failed images, ``failed`` (exit 1) when some images failed,
``incomplete`` (exit 4) when a shard is missing, still running, interrupted or refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from fdpipe.job.record import RUNS_DIR, read_record, record_files

EXIT_OK, EXIT_FAILED, EXIT_INCOMPLETE = 0, 1, 4


@dataclass
class ShardStatus:
    shard: tuple[int, int]
    run_id: str | None  # None: no run of this shard in the window
    status: str  # complete, running, interrupted, failed, refused, empty, missing
    exit_code: int | None
    ok: int = 0
    failed: int = 0
    node_hosts: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        if self.run_id is None:
            return "missing"
        if self.status in ("complete", "empty"):
            return "failed" if self.failed or self.exit_code == 1 else "ok"
        return self.status


@dataclass
class NightStatus:
    shards: list[ShardStatus]
    unreadable: list[str] = field(default_factory=list)  # records that cannot be read, why
    newest_unreadable: bool = False  # the newest record is one of them: its night is unknown

    @property
    def state(self) -> str:
        if self.newest_unreadable:
            return "incomplete"
        states = {shard.state for shard in self.shards}
        if states <= {"ok"}:
            return "ok"
        if states <= {"ok", "failed"}:
            return "failed"
        return "incomplete"

    @property
    def exit_code(self) -> int:
        return {"ok": EXIT_OK, "failed": EXIT_FAILED}.get(self.state, EXIT_INCOMPLETE)

    def as_json(self) -> dict[str, object]:
        return {
            "status": self.state,
            "exit_code": self.exit_code,
            "shards": [
                {
                    "shard": list(s.shard),
                    "state": s.state,
                    "run_id": s.run_id,
                    "status": s.status,
                    "exit_code": s.exit_code,
                    "ok": s.ok,
                    "failed": s.failed,
                }
                for s in self.shards
            ],
            "unreadable_records": self.unreadable,
        }


def run_records(
    output: str | Path,
    unreadable: dict[str, str] | None = None,
    options: dict[str, Any] | None = None,
) -> list[dict[str, object]]:
    """Every readable run record of ``output`` (a folder or a store URL), oldest first; each one
    that cannot be read (or is no record) goes into ``unreadable`` (by its path) with why."""
    records = []
    for name in record_files(output, options):
        try:
            record = json.loads(read_record(output, name, options))
        except (OSError, ValueError) as exc:
            why: str | None = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        else:
            good = isinstance(record, dict) and isinstance(record.get("run_id"), str)
            why = None if good else "not a run record (no run_id)"
        if why is None:
            records.append(record)
        elif unreadable is not None:  # (record_files lists files only, never a folder)
            unreadable[f"{os.fspath(output).rstrip('/')}/{RUNS_DIR}/{name}"] = why
    return sorted(records, key=lambda r: str(r["run_id"]))


def started(record: dict[str, object]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(record.get("started")))
    except ValueError:
        return None


def night_status(
    output: str | Path,
    window: timedelta = timedelta(hours=20),
    options: dict[str, Any] | None = None,
) -> NightStatus:
    """The status of the newest night of ``output`` (see the module docstring)."""
    bad: dict[str, str] = {}
    records = run_records(output, bad, options)
    unreadable = [f"{path}: {why}" for path, why in bad.items()]
    # Records are named by run id: an unreadable one named after every readable one is newest.
    last = str(records[-1]["run_id"]) if records else ""
    newest_unreadable = max((Path(path).stem for path in bad), default="") > last
    if not records:
        missing = [ShardStatus((0, 1), None, "missing", None)]
        return NightStatus(missing, unreadable, newest_unreadable)
    newest = records[-1]
    count = record_shard(newest)[1]
    newest_start = started(newest)
    latest: dict[int, dict[str, object]] = {}
    for record in records:
        index, n = record_shard(record)
        when = started(record)
        if n != count or when is None or newest_start is None or newest_start - when > window:
            continue
        if record.get("status") == "refused" and index in latest:
            continue  # a run refused beside one that ran (a held lock) changes nothing
        latest[index] = record  # records are oldest first: the last one wins
    shards = []
    for index in range(count):
        if index not in latest:
            shards.append(ShardStatus((index, count), None, "missing", None))
            continue
        shard_record = latest[index]
        found = shard_record.get("counts")
        counts = found if isinstance(found, dict) else {}
        code = shard_record.get("exit_code")
        shards.append(
            ShardStatus(
                (index, count),
                str(shard_record["run_id"]),
                str(shard_record.get("status", "unknown")),
                code if isinstance(code, int) else None,
                ok=int(counts.get("ok", 0) or 0),
                failed=int(counts.get("failed", 0) or 0),
            )
        )
    return NightStatus(shards, unreadable, newest_unreadable)


def record_shard(record: dict[str, object]) -> tuple[int, int]:
    shard = record.get("shard")
    if isinstance(shard, list) and len(shard) == 2 and all(isinstance(v, int) for v in shard):
        return shard[0], shard[1]
    return 0, 1


__all__ = ["NightStatus", "ShardStatus", "night_status", "run_records"]
