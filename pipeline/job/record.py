"""The run record: ``OUTPUT/_runs/<run id>.json`` and its copy at ``--summary``.

An output on an object store keeps its records there too (through fsspec: one PUT is atomic, a
reader never sees half a record).

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
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fdpipe.job.remote import output_filesystem
from fdpipe.job.urls import is_remote

log = logging.getLogger("fdpipe.job")

RUNS_DIR = "_runs"  # run records; readers of the parts skip "_" and "." names
MAX_RECORD_BYTES = 16 << 20
RUN_ID_FORMAT = "%Y%m%dT%H%M%S%fZ"


def next_run_id(newest: str) -> str:
    """The UTC start time, later than every run already in the output (a machine whose clock is
    behind must still supersede them), with a random tail for runs started at once."""
    now = datetime.now(UTC)
    if newest:
        after = datetime.strptime(newest.split("-")[0], RUN_ID_FORMAT).replace(tzinfo=UTC)
        now = max(now, after + timedelta(microseconds=1))
    return f"{now.strftime(RUN_ID_FORMAT)}-{secrets.token_hex(3)}"


Output = str | os.PathLike[str]  # a local folder or an object-store URL


def record_files(output: Output, options: dict[str, Any] | None = None) -> list[str]:
    """The names of the output's run records (``<run id>.json``), sorted; [] when it has none
    or they cannot be listed."""
    text = os.fspath(output)
    if not is_remote(text):
        directory = Path(text) / RUNS_DIR
        try:
            # every name, odd ones too (a link, a FIFO): readers name what they cannot read
            return sorted(p.name for p in directory.glob("*.json") if not p.is_dir())
        except OSError:
            return []
    try:
        fs, root = output_filesystem(text, options)
        found = fs.ls(f"{root.rstrip('/')}/{RUNS_DIR}", detail=False, refresh=True)
    except Exception:
        return []
    return sorted(n for name in found if (n := name.rsplit("/", 1)[-1]).endswith(".json")
                  and not n.startswith("."))  # fmt: skip


def read_record(output: Output, name: str, options: dict[str, Any] | None = None) -> str:
    """The text of the run record ``name`` (OSError or ValueError when it cannot be read)."""
    text = os.fspath(output)
    try:
        if not is_remote(text):
            fd = os.open(Path(text) / RUNS_DIR / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as fh:
                if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO, a device
                    raise ValueError("not a regular file")
                data = fh.read(MAX_RECORD_BYTES + 1)
        else:
            fs, root = output_filesystem(text, options)
            path = f"{root.rstrip('/')}/{RUNS_DIR}/{name}"
            data = bytes(fs.cat_file(path, start=0, end=MAX_RECORD_BYTES + 1))
        if len(data) > MAX_RECORD_BYTES:  # a record is a few KiB: never read a huge file whole
            raise ValueError(f"larger than {MAX_RECORD_BYTES >> 20} MiB: not a run record")
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(str(exc)) from None
    except (OSError, ValueError):
        raise
    except Exception as exc:  # botocore's errors are no OSError
        raise OSError(str(exc)) from None


def newest_record(output: Output, options: dict[str, Any] | None = None) -> str:
    """The newest run id among the output's records ("" when it has none)."""
    names = [n.removesuffix(".json") for n in record_files(output, options) if n[:1].isdigit()]
    return max(names, default="")


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

    def __init__(
        self,
        output: Output | None,
        summary: Path | None,
        fields: dict[str, object],
        options: dict[str, Any] | None = None,
    ):
        self.output, self.summary, self.options = output, summary, options
        self.fields = {"started": datetime.now(UTC).isoformat()} | fields

    @property
    def run_id(self) -> str:
        if "run_id" not in self.fields:
            newest = newest_record(self.output, self.options) if self.output is not None else ""
            self.fields["run_id"] = next_run_id(newest)
        return str(self.fields["run_id"])

    def write(self, **fields: object) -> None:
        """Write the record (OSError when it cannot be)."""
        self.fields |= fields
        if self.output is not None and is_remote(os.fspath(self.output)):
            fs, root = output_filesystem(os.fspath(self.output), self.options)
            text = json.dumps(self.fields, indent=2, default=str) + "\n"
            try:
                fs.pipe_file(f"{root.rstrip('/')}/{RUNS_DIR}/{self.run_id}.json", text.encode())
            except Exception as exc:  # botocore's errors are no OSError
                if isinstance(exc, OSError):
                    raise
                raise OSError(str(exc)) from None
        elif self.output is not None:
            runs = Path(self.output) / RUNS_DIR
            if runs.is_symlink():  # would lead the record out of the output
                raise OSError(f"{runs} is a link: fdpipe writes its records only in the output")
            write_json(runs / f"{self.run_id}.json", self.fields)
        if self.summary is not None:
            write_json(self.summary, self.fields)

    def end(self, status: str, exit_code: int, error: str | None = None, **fields: object) -> None:
        """The last write of a run that did not complete: it never raises, so the run's own
        error stays the one reported. A refusal creates no output directory."""
        run_id = self.run_id  # numbered after the output's records before it may be dropped
        if self.output is not None and not self.has_records():
            self.output = None
        end = {"status": status, "finished": datetime.now(UTC).isoformat()}
        try:
            self.write(run_id=run_id, **end, exit_code=exit_code, error=error, **fields)
        except OSError as exc:
            log.warning("cannot write the run record: %s", exc)

    def has_records(self) -> bool:
        """Whether the output is there to hold records: a local folder, or a store prefix that
        a run already wrote to (a refusal creates neither)."""
        assert self.output is not None
        text = os.fspath(self.output)
        return bool(record_files(text, self.options)) if is_remote(text) else Path(text).is_dir()


__all__ = [
    "RUNS_DIR",
    "RunRecord",
    "newest_record",
    "next_run_id",
    "read_record",
    "record_files",
    "write_json",
]
