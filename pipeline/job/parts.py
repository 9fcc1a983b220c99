"""The Parquet sink of a job: atomic part files and what an output already holds.

A job's output is a directory of part files. Each part holds the rows of a contiguous run of
images of the (sorted) input list, is written to a hidden temp file, fsynced, then renamed: a
part is either complete and final or invisible. Parts are never edited: a rerun adds rows, and
``fdpipe.job.current`` says which rows are current, so an output stays consistent whenever a run
is killed. ``OutputDataset.images`` is what a rerun compares its input with.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fdpipe.errors import FdpipeError
from fdpipe.job.config import RunParams
from fdpipe.job.current import KEY_COLUMNS, current_mask
from fdpipe.job.progress import EXIT_STORAGE
from fdpipe.job.schema import COMPRESSION, METADATA_KEY, SCHEMA

log = logging.getLogger("fdpipe.job")
PART_PATTERN = re.compile(r"^part-(?:s(\d+)of(\d+)-)?(\d+)\.parquet$")
TEMP_PATTERN = re.compile(r"^\.(.+)\.\d+\.tmp$")  # ".<part name>.<pid>.tmp"


# Run parameters that every run into one output must share; methods and classes may differ.
FIXED_PARAMS = ("model", "weights_id", "layer", "preprocess")


class ResumeError(FdpipeError, ValueError):
    """The output directory holds rows that a run with these parameters cannot join."""


class StorageError(FdpipeError):
    """The output cannot be written (disk full, file-size limit, I/O error): not the input's
    fault nor a setting's. What was written before stays; a rerun continues."""

    exit_code = EXIT_STORAGE


# What a full or failing file system says, as opposed to a wrong path or permission.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO, errno.EROFS})


class PartFileError(FdpipeError, ValueError):
    """A part file that cannot be read (truncated, damaged, not Parquet); names the file."""

    def __init__(self, path: Path, exc: Exception) -> None:
        super().__init__(f"{path}: unreadable part file ({type(exc).__name__}: {exc})")
        self.path = path


def part_name(shard: tuple[int, int], sequence: int) -> str:
    index, count = shard
    prefix = "part-" if count == 1 else f"part-s{index}of{count}-"
    return f"{prefix}{sequence:06d}.parquet"


@dataclass
class ImageState:
    """An image as the output holds it now (its current rows)."""

    sha256: str | None
    size: int | None
    mtime_ns: int | None
    failed: bool  # its newest run failed on it
    done: set[tuple[str, str]] = field(default_factory=set)  # (method, targets) with ok rows


STATE_COLUMNS = [*KEY_COLUMNS, "file_size", "file_mtime_ns"]


class OutputDataset:
    """One shard's view of an output directory (several shards may share the directory)."""

    def __init__(self, directory: str | os.PathLike[str], shard: tuple[int, int] = (0, 1)) -> None:
        self.directory = Path(directory)
        self.shard = shard
        self.next_sequence: int | None = None

    def parts(self, *, own: bool = False) -> list[Path]:
        """Complete part files in name order; ``own``: only this shard's."""
        return [
            path
            for path, (shard, _) in self._listing(PART_PATTERN.match)
            if not own or shard == self.shard
        ]

    def temp_files(self) -> list[Path]:
        """This shard's temp files: what a killed run left; other shards' are not touched."""

        def own_temp(name: str) -> re.Match | None:
            temp = TEMP_PATTERN.match(name)
            return PART_PATTERN.match(temp[1]) if temp else None

        return [path for path, (shard, _) in self._listing(own_temp) if shard == self.shard]

    def _listing(self, match: Callable[[str], re.Match | None]) -> list[tuple[Path, tuple]]:
        """(path, ((shard index, count), sequence)) of the files whose name ``match`` accepts."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in sorted(self.directory.iterdir()):
            if parsed := match(path.name):
                index, count = (int(parsed[1]), int(parsed[2])) if parsed[1] else (0, 1)
                found.append((path, ((index, count), int(parsed[3]))))
        return found

    def clear(self) -> None:
        """``--overwrite``: remove this shard's parts (all parts for an unsharded run)."""
        unsharded = self.shard == (0, 1)
        for path in self.parts(own=not unsharded) + self.temp_files():
            path.unlink()

    def discard_temp_files(self) -> None:
        for stale in self.temp_files():  # left by a killed run: never part of the dataset
            stale.unlink()

    def check(self, params: RunParams) -> None:
        """Refuses to add rows made with other fixed parameters, or a method label reused with
        other options, naming the differing fields."""
        wanted = params.as_json()
        for path in self.parts():
            try:
                check_params(path, wanted)
            except PartFileError as exc:  # its images have no rows now: this run redoes them
                set_aside(path, exc)

    def images(self) -> tuple[dict[str, ImageState], str]:
        """Every image with current rows (pruned ones are gone), and the newest run id."""
        tables = []
        for path in self.parts():
            names = read_schema(path).names
            if "run_id" not in names:
                raise ResumeError(
                    f"{path} was written by an older fdpipe (no run_id column): "
                    "pass --overwrite to start over, or choose another --output"
                )
            tables.append(read_part(path, columns=STATE_COLUMNS))
        if not tables:
            return {}, ""
        table = pa.concat_tables(tables)
        newest_run = pc.max(table["run_id"]).as_py() or ""
        current = table.filter(current_mask(table))
        states: dict[str, ImageState] = {}
        newest: dict[str, str] = {}
        columns = current.select(
            ["image_path", "run_id", "image_sha256", "status", "method", "targets",
             "file_size", "file_mtime_ns"]
        ).to_pydict()  # fmt: skip
        for key, run, sha, status, method, targets, size, mtime in zip(
            *columns.values(), strict=True
        ):
            state = states.get(key)
            if state is None or run > newest[key]:  # the newest run's file stat and status
                newest[key] = run
                done = state.done if state else set()
                state = states[key] = ImageState(sha, size, mtime, status == "failed", done)
            if status == "ok":
                state.done.add((method, targets))
        return states, newest_run

    def write(self, table: pa.Table, metadata: dict[str, object]) -> Path:
        """Atomically add ``table`` as the next part of this shard."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.next_sequence is None:
            mine = [
                seq for _, (shard, seq) in self._listing(PART_PATTERN.match) if shard == self.shard
            ]
            self.next_sequence = max(mine, default=-1) + 1
        final = self.directory / part_name(self.shard, self.next_sequence)
        self.next_sequence += 1
        temp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        record = {METADATA_KEY: json.dumps(metadata, default=str)}
        table = table.cast(SCHEMA).replace_schema_metadata(record)  # whoever built the rows
        try:
            pq.write_table(table, temp, compression=COMPRESSION)
            with temp.open("rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(temp, final)
        except BaseException:  # an interrupt or a full disk: no half-written file stays
            temp.unlink(missing_ok=True)
            raise
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)  # make the rename itself durable
        finally:
            os.close(directory)
        return final


def set_aside(path: Path, exc: Exception) -> Path:
    """Rename an unreadable part to a hidden name (kept for inspection, ignored by readers)."""
    n = 0
    while (aside := path.with_name(f".{path.name}.unreadable{n or ''}")).exists():
        n += 1
    os.replace(path, aside)
    log.warning("%s; set aside as %s, its images are explained again", exc, aside.name)
    return aside


def read_part(
    path: Path, columns: list[str] | None = None, *, present_only: bool = False
) -> pa.Table:
    """A part file's rows; PartFileError naming the file when it cannot be read.
    ``present_only``: of ``columns``, those the file has (older outputs lack newer columns)."""
    try:
        with pq.ParquetFile(path) as part:  # not read_table: no dataset set-up per file
            if present_only and columns is not None:
                columns = [c for c in columns if c in part.schema_arrow.names]
            return part.read(columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise PartFileError(path, exc) from None


def read_schema(path: str | os.PathLike[str]) -> pa.Schema:
    """A part file's schema; PartFileError naming the file when it cannot be read."""
    try:
        return pq.read_schema(Path(path))
    except (pa.ArrowException, OSError) as exc:
        raise PartFileError(Path(path), exc) from None


def read_metadata(path: str | os.PathLike[str]) -> dict[str, object]:
    """The run record stored in a part file (JSON under the ``fdpipe`` key)."""
    metadata = read_schema(path).metadata or {}
    raw = metadata.get(METADATA_KEY.encode())
    if raw is not None:
        try:
            return json.loads(raw)
        except ValueError:
            pass
    raise ResumeError(f"{path} is not an fdpipe part file (no {METADATA_KEY!r} metadata)")


def check_params(path: Path, wanted: dict) -> None:
    """``wanted`` (JSON-normalised run parameters) may join the rows of part ``path``."""
    stored = read_metadata(path).get("params", {})
    assert isinstance(stored, dict)
    changes = [
        f"{k}: {stored.get(k)!r} -> {wanted.get(k)!r}"
        for k in FIXED_PARAMS
        if stored.get(k) != wanted.get(k)
    ]
    if changes:
        raise ResumeError(
            f"{path.parent} holds maps of another model setup ({'; '.join(changes)}): pass "
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
                f"{path.parent} holds method {label!r} with other options ({'; '.join(diff)}): "
                f"give the variant its own spec (e.g. --method '{label.split(':')[0]}:{first}="
                f"{options.get(first)}') to add it, pass --overwrite, or choose another --output"
            )


@dataclass
class PartSink:
    """Cuts a stream of row tables into parts of ``part_size`` images, always between images."""

    dataset: OutputDataset
    part_size: int
    metadata: dict[str, object]
    pending: pa.Table | None = None
    written: list[Path] = field(default_factory=list)

    def add(self, table: pa.Table) -> None:
        rows = table if self.pending is None else pa.concat_tables([self.pending, table])
        starts = image_starts(rows)
        # Only cut once a later image has begun: an image's rows may straddle two tables.
        while len(starts) > self.part_size:
            cut = int(starts[self.part_size])
            self.written.append(self.dataset.write(rows.slice(0, cut), self.metadata))
            rows, starts = rows.slice(cut), starts[self.part_size :] - cut
        self.pending = rows if rows.num_rows else None

    def close(self) -> None:
        if self.pending is not None:
            self.written.append(self.dataset.write(self.pending, self.metadata))
            self.pending = None


def image_starts(rows: pa.Table) -> np.ndarray:
    """Row index where each image's (contiguous) rows begin."""
    paths = rows.column("image_path")
    if len(paths) == 0:
        return np.zeros(0, dtype=np.int64)
    changed = pc.not_equal(paths.slice(1), paths.slice(0, len(paths) - 1))
    return np.concatenate([[0], np.flatnonzero(changed.to_numpy(zero_copy_only=False)) + 1])


__all__ = [
    "FIXED_PARAMS",
    "PART_PATTERN",
    "STORAGE_ERRNOS",
    "ImageState",
    "OutputDataset",
    "PartFileError",
    "PartSink",
    "ResumeError",
    "StorageError",
    "check_params",
    "image_starts",
    "part_name",
    "read_metadata",
    "read_part",
    "read_schema",
]
