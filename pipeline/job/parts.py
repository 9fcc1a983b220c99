"""The job's sink: its rows committed to the results table in parts of ``part_size`` images.

Each part is one commit of the output's Delta table (``fdpipe.job.table``): complete and current,
or invisible, whenever a run is killed; a killed run loses at most the part it is writing.
``image_states`` is what a rerun compares its input with; ``check_params`` what may join it.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from fdpipe.errors import FdpipeError
from fdpipe.job.config import RunParams
from fdpipe.job.current import KEY_COLUMNS
from fdpipe.job.table import ResultsTable, StorageError

# Run parameters that every run into one output must share; methods and classes may differ.
FIXED_PARAMS = ("model", "weights_id", "layer", "preprocess")


class ResumeError(FdpipeError, ValueError):
    """The output holds rows that a run with these parameters cannot join."""


# What a full or failing file system says, as opposed to a wrong path or permission.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO, errno.EROFS})


@dataclass
class ImageState:
    """An image as the output holds it now (its current rows)."""

    sha256: str | None
    size: int | None
    mtime_ns: int | None
    failed: bool  # its newest run failed on it
    done: set[tuple[str, str]] = field(default_factory=set)  # (method, targets) with ok rows


STATE_COLUMNS = [*KEY_COLUMNS, "file_size", "file_mtime_ns"]


def image_states(table: ResultsTable) -> tuple[dict[str, ImageState], str]:
    """Every image with rows in the table, and the newest run id (one read of a few columns)."""
    current = table.rows(columns=STATE_COLUMNS)
    if not current.num_rows:
        return {}, ""
    newest_run = pc.max(current["run_id"]).as_py() or ""
    states: dict[str, ImageState] = {}
    newest: dict[str, str] = {}
    columns = current.select(
        ["image_path", "run_id", "image_sha256", "status", "method", "targets",
         "file_size", "file_mtime_ns"]
    ).to_pydict()  # fmt: skip
    for key, run, sha, status, method, targets, size, mtime in zip(*columns.values(), strict=True):
        state = states.get(key)
        if state is None or run > newest[key]:  # the newest run's file stat and status
            newest[key] = run
            done = state.done if state else set()
            state = states[key] = ImageState(sha, size, mtime, status == "failed", done)
        if status == "ok":
            state.done.add((method, targets))
    return states, newest_run


def check_table(table: ResultsTable, params: RunParams) -> None:
    """Refuses to add rows made with other fixed parameters, or a method label reused with
    other options, naming the differing fields (every run since the table was last cleared)."""
    wanted = params.as_json()
    for record in table.commits():
        stored = record.get("params")
        if isinstance(stored, dict):
            check_params(table.uri, stored, wanted)
        if record.get("cleared"):
            break


def check_params(where: str, stored: dict, wanted: dict) -> None:
    """``wanted`` (JSON-normalised run parameters) may join rows made with ``stored``."""
    changes = [
        f"{k}: {stored.get(k)!r} -> {wanted.get(k)!r}"
        for k in FIXED_PARAMS
        if stored.get(k) != wanted.get(k)
    ]
    if changes:
        raise ResumeError(
            f"{where} holds maps of another model setup ({'; '.join(changes)}): pass "
            "--overwrite to start over, or choose another --output"
        )
    stored_methods, wanted_methods = stored.get("methods", {}), wanted.get("methods", {})
    for label, options in wanted_methods.items():
        if label in stored_methods and stored_methods[label] != options:
            before = stored_methods[label]
            diff = [
                f"{k}: {before.get(k)!r} -> {options.get(k)!r}"
                for k in sorted(set(before) | set(options))
                if before.get(k) != options.get(k)
            ]
            first = diff[0].split(":")[0]
            raise ResumeError(
                f"{where} holds method {label!r} with other options ({'; '.join(diff)}): "
                f"give the variant its own spec (e.g. --method '{label.split(':')[0]}:{first}="
                f"{options.get(first)}') to add it, pass --overwrite, or choose another --output"
            )


@dataclass
class PartSink:
    """Cuts a stream of row tables into parts of ``part_size`` images, always between images,
    and commits each part to ``table`` (``pruned`` rows remove their image's rows)."""

    table: ResultsTable
    part_size: int
    metadata: dict[str, object]
    backend: Callable[[], str] | None = None  # the engine paths that ran so far (``run.backend``)
    pending: pa.Table | None = None
    written: list[int] = field(default_factory=list)  # the table versions committed
    watch: Callable[[pa.Table], None] | None = None  # sees every row table (a sample's tap)

    def add(self, table: pa.Table) -> None:
        if self.watch is not None:
            self.watch(table)
        rows = table if self.pending is None else pa.concat_tables([self.pending, table])
        starts = image_starts(rows)
        # Only cut once a later image has begun: an image's rows may straddle two tables.
        while len(starts) > self.part_size:
            cut = int(starts[self.part_size])
            self.commit(rows.slice(0, cut))
            rows, starts = rows.slice(cut), starts[self.part_size :] - cut
        self.pending = rows if rows.num_rows else None

    def close(self) -> None:
        if self.pending is not None:
            self.commit(self.pending)
            self.pending = None

    def commit(self, rows: pa.Table) -> None:
        self.note_backend()
        self.written.append(self.table.commit(rows, self.metadata))

    def note_backend(self) -> None:
        """``run.backend`` of the metadata (and of the run record, which shares it): the
        engine paths that really ran, not the ones chosen before any image."""
        run = self.metadata.get("run")
        if self.backend is not None and isinstance(run, dict):
            run["backend"] = self.backend()


def image_starts(rows: pa.Table) -> np.ndarray:
    """Row index where each image's (contiguous) rows begin."""
    paths = rows.column("image_path")
    if len(paths) == 0:
        return np.zeros(0, dtype=np.int64)
    changed = pc.not_equal(paths.slice(1), paths.slice(0, len(paths) - 1))
    return np.concatenate([[0], np.flatnonzero(changed.to_numpy(zero_copy_only=False)) + 1])


__all__ = [
    "FIXED_PARAMS",
    "STATE_COLUMNS",
    "STORAGE_ERRNOS",
    "ImageState",
    "PartSink",
    "ResumeError",
    "StorageError",
    "check_params",
    "check_table",
    "image_starts",
    "image_states",
]
