"""The run record: ``OUTPUT/_runs/<run id>.json`` and its copy at ``--summary``.

Written when a run starts (``running``) and again however it ends: ``complete`` or ``empty``, or
``refused`` (exit 2, with the reason), ``interrupted`` (Ctrl-C: 130, SIGTERM: 143) or ``failed``
(a crash or a storage error, with the error), so that monitoring that reads the summary never
sees an earlier night's success on a night when nothing ran.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

log = logging.getLogger("fdpipe.job")

RUNS_DIR = "_runs"  # run records; readers of the parts skip "_" and "." names
RUN_ID_FORMAT = "%Y%m%dT%H%M%S%fZ"


def next_run_id(newest: str) -> str:
    """The UTC start time, later than every run already in the output (a machine whose clock is
    behind must still supersede them), with a random tail for runs started at once."""
    now = datetime.now(UTC)
    if newest:
        after = datetime.strptime(newest.split("-")[0], RUN_ID_FORMAT).replace(tzinfo=UTC)
        now = max(now, after + timedelta(microseconds=1))
    return f"{now.strftime(RUN_ID_FORMAT)}-{secrets.token_hex(3)}"


def newest_record(output: Path) -> str:
    """The newest run id among the output's records ("" when it has none)."""
    try:
        return max((p.stem for p in (output / RUNS_DIR).glob("[0-9]*.json")), default="")
    except OSError:
        return ""


def write_json(path: Path, record: dict[str, object]) -> None:
    """Atomically (temp + fsync + rename), so a reader never sees half a record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temp.open("w") as fh:
        fh.write(json.dumps(record, indent=2, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(temp, path)


class RunRecord:
    """One run's record; ``fields`` grow as the run learns them (run id, parameters, counts)."""

    def __init__(self, output: Path | None, summary: Path | None, fields: dict[str, object]):
        self.output, self.summary = output, summary
        self.fields = {"started": datetime.now(UTC).isoformat()} | fields

    @property
    def run_id(self) -> str:
        if "run_id" not in self.fields:
            newest = newest_record(self.output) if self.output is not None else ""
            self.fields["run_id"] = next_run_id(newest)
        return str(self.fields["run_id"])

    def write(self, **fields: object) -> None:
        """Write the record (OSError when it cannot be)."""
        self.fields |= fields
        if self.output is not None:
            write_json(self.output / RUNS_DIR / f"{self.run_id}.json", self.fields)
        if self.summary is not None:
            write_json(self.summary, self.fields)

    def end(self, status: str, exit_code: int, error: str | None = None, **fields: object) -> None:
        """The last write of a run that did not complete: it never raises, so the run's own
        error stays the one reported. A refusal creates no output directory."""
        run_id = self.run_id  # numbered after the output's records before it may be dropped
        if self.output is not None and not self.output.is_dir():
            self.output = None
        end = {"status": status, "finished": datetime.now(UTC).isoformat()}
        try:
            self.write(run_id=run_id, **end, exit_code=exit_code, error=error, **fields)
        except OSError as exc:
            log.warning("cannot write the run record: %s", exc)


__all__ = ["RUNS_DIR", "RunRecord", "newest_record", "next_run_id", "write_json"]
