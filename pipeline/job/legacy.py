"""Outputs of fdpipe before the results table: a directory of Parquet part files plus a rule.

Such an output is append-only: ``part-[s<i>of<n>-]<seq>.parquet`` files, each carrying its run
record under the ``fdpipe`` schema-metadata key, and ``fdpipe.job.current`` says which rows are
current. fdpipe reads this layout only to convert it (``fdpipe migrate``); every other command
refuses it with that hint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fdpipe.errors import FdpipeError
from fdpipe.job.current import KEY_COLUMNS, current_mask
from fdpipe.job.schema import METADATA_KEY, SCHEMA
from fdpipe.job.table import ResultsTable, TableError, legacy_part_files


class PartFileError(FdpipeError, ValueError):
    """A part file that cannot be read (truncated, damaged, not Parquet); names the file."""

    def __init__(self, path: Path, exc: Exception) -> None:
        super().__init__(f"{path}: unreadable part file ({type(exc).__name__}: {exc})")
        self.path = path


class LegacyOutput:
    """A directory of part files (the layout of fdpipe before the results table)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def parts(self) -> list[Path]:
        """Complete part files, in name order."""
        return legacy_part_files(self.directory)

    def keys(self) -> pa.Table:
        """The key columns of every row, in part order (names a part that cannot be read)."""
        tables = [read_part(path, columns=KEY_COLUMNS) for path in self.parts()]
        return pa.concat_tables(tables) if tables else SCHEMA.empty_table().select(KEY_COLUMNS)

    def rows(self, *, history: bool = False) -> Iterator[tuple[pa.Table, dict[str, object]]]:
        """(rows in the table schema, run record) of each part: its current rows, or with
        ``history`` every row, the parts in the order their runs ran."""
        parts = self.parts()
        mask = None if history else current_mask(self.keys())
        offsets = np.cumsum([0, *(pq.read_metadata(p).num_rows for p in parts)])
        order = list(range(len(parts)))
        if history:  # a part holds the rows of one run: replay the runs in run-id order
            first = [read_part(p, columns=["run_id"])["run_id"][0].as_py() for p in parts]
            order = sorted(order, key=lambda i: (first[i], parts[i].name))
        for i in order:
            table = read_part(parts[i])
            if mask is not None:
                table = table.filter(pa.array(mask[offsets[i] : offsets[i + 1]]))
            if table.num_rows:
                missing = [f for f in SCHEMA if f.name not in table.column_names]
                for field in missing:  # written before a column existed
                    table = table.append_column(field, pa.nulls(table.num_rows, field.type))
                yield table.select(SCHEMA.names).cast(SCHEMA), read_metadata(parts[i])


def migrate(old: str | os.PathLike[str], new: ResultsTable, *, history: bool = False) -> int:
    """Convert the part layout at ``old`` into the results table ``new`` (which must not exist):
    its current rows, or with ``history`` every run replayed in order (a table version per
    part, so earlier runs stay reachable by time travel). Returns the rows now current."""
    legacy = LegacyOutput(old)
    if not legacy.parts():
        raise TableError(f"{old} holds no part files of an earlier fdpipe (part-*.parquet)")
    if new.exists():
        raise TableError(f"{new.uri} already holds a results table: choose a new output")
    for rows, record in legacy.rows(history=history):
        new.commit(rows, record | {"migrated_from": str(Path(old).absolute())})
    return new.rows(columns=["image_path"]).num_rows


def read_part(path: Path, columns: list[str] | None = None) -> pa.Table:
    """A part file's rows; PartFileError naming the file when it cannot be read."""
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise PartFileError(path, exc) from None


def read_metadata(path: Path) -> dict[str, object]:
    """The run record stored in a part file (JSON under the ``fdpipe`` key)."""
    try:
        metadata = pq.read_schema(path).metadata or {}
    except (pa.ArrowException, OSError) as exc:
        raise PartFileError(path, exc) from None
    raw = metadata.get(METADATA_KEY.encode())
    try:
        record = json.loads(raw) if raw is not None else None
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise PartFileError(path, ValueError(f"no {METADATA_KEY!r} run record"))
    return record


__all__ = ["LegacyOutput", "PartFileError", "migrate", "read_metadata", "read_part"]
