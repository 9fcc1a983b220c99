"""Parquet image tables: a column of image bytes (or Hugging Face's ``{bytes, path}`` struct), an
id column for ``image_path``, other columns as targets. Read by row group, never whole.

Listing reads only the id and target columns; an image's bytes are read with its row group's
image column, which a small cache keeps while the decode threads (which go in table order) take
their rows from it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, cast

import pyarrow as pa
import pyarrow.parquet as pq
from fdpipe.errors import FdpipeError
from fdpipe.job.inputs import (
    MAX_FILE_BYTES,
    ChangeToken,
    Entry,
    EntryError,
    InputError,
    InputMissing,
    Source,
    key_text,
)
from fdpipe.job.sources.store import change_token, filesystem, open_file, version_number
from fdpipe.job.sources.webdataset import pattern_root, shard_names

ID_COLUMNS = ("image_path", "path", "file", "filename", "image_id", "id", "key", "__key__")


class TableError(FdpipeError, ValueError):
    """A table that is not an image table, or is ambiguous about which column is which."""


@dataclass(frozen=True)
class ImageColumn:
    name: str
    struct: bool  # Hugging Face's {bytes, path}: the bytes are the struct's "bytes" child

    @property
    def bytes_path(self) -> str:
        return f"{self.name}.bytes" if self.struct else self.name


def _is_binary(kind: pa.DataType) -> bool:
    return bool(pa.types.is_binary(kind) or pa.types.is_large_binary(kind))


def image_column(schema: pa.Schema) -> ImageColumn | None:
    """The column holding image bytes; None when there is none (a manifest of paths)."""
    found = []
    for column in schema:
        if _is_binary(column.type):
            found.append(ImageColumn(column.name, False))
        elif pa.types.is_struct(column.type):
            names = {child.name: child.type for child in column.type}
            if "bytes" in names and _is_binary(names["bytes"]):
                found.append(ImageColumn(column.name, True))
    if len(found) > 1:
        listed = ", ".join(c.name for c in found)
        raise TableError(f"several columns hold bytes ({listed}): keep one image column")
    return found[0] if found else None


def id_column(schema: pa.Schema, image: ImageColumn) -> str | None:
    """The column naming each row (``image_path``, ``id``, ...), else the struct's ``path``."""
    for name in ID_COLUMNS:
        if name in schema.names and name != image.name:
            return name
    if image.struct and "path" in {child.name for child in schema.field(image.name).type}:
        return f"{image.name}.path"
    return None


@dataclass(frozen=True)
class TableRow:
    key: str | None  # its id; None: the table has no id column (the caller numbers the rows)
    row_group: int
    index: int  # within the row group
    target: str | None


def scan_table(fh: IO[bytes], target: str | None = None) -> tuple[ImageColumn, list[TableRow]]:
    """Every row of one table file in storage order: id, row group, index, target."""
    parquet = pq.ParquetFile(fh)
    schema = parquet.schema_arrow
    image = image_column(schema)
    if image is None:
        raise TableError("no column of image bytes (binary, or a struct with a bytes field)")
    ident = id_column(schema, image)
    if target is not None and target not in schema.names:
        raise TableError(f"no column {target!r}: {', '.join(schema.names)}")
    columns = [c for c in (ident, target) if c is not None]
    rows = []
    for group in range(parquet.num_row_groups):
        if columns:
            values = parquet.read_row_group(group, columns=columns)
            keys = _flat(values, ident) if ident else [None] * values.num_rows
            targets = _flat(values, target) if target else [None] * values.num_rows
        else:
            count = parquet.metadata.row_group(group).num_rows
            keys, targets = [None] * count, [None] * count
        for index, (key, label) in enumerate(zip(keys, targets, strict=True)):
            text = None if target is None else ("" if label is None else str(label).strip())
            rows.append(TableRow(None if key is None else str(key), group, index, text))
    return image, rows


def _flat(table: pa.Table, dotted: str) -> list:
    """A top-level column, or a struct's child (``image.path``) as read by a nested selection."""
    name, _, child = dotted.partition(".")
    column = table.column(name)
    if child:
        column = pa.chunked_array([cast(pa.StructArray, c).field(child) for c in column.chunks])
    return column.to_pylist()


class RowGroupCache:
    """The image column of the last few row groups read, shared by the decode threads."""

    def __init__(self, capacity: int = 4) -> None:
        self.capacity = capacity
        self.groups: OrderedDict[tuple[str, int], pa.Array] = OrderedDict()
        self.lock = threading.Lock()

    def cell(
        self,
        file: str,
        group: int,
        index: int,
        load: Callable[[], pa.Array],
    ) -> bytes | None:
        with self.lock:  # one loader at a time: threads wanting the same group wait for it
            column = self.groups.get((file, group))
            if column is None:
                column = self.groups[(file, group)] = load()
                while len(self.groups) > self.capacity:
                    self.groups.popitem(last=False)
            else:
                self.groups.move_to_end((file, group))
        value = column[index].as_py()
        return value if value is None else bytes(value)

    def __reduce__(self) -> tuple[type[RowGroupCache], tuple[int]]:  # shipped to Ray empty
        return RowGroupCache, (self.capacity,)


def read_image_column(fh: IO[bytes], group: int, image: ImageColumn) -> pa.Array:
    """One row group's image bytes (the struct's ``bytes`` child alone)."""
    table = pq.ParquetFile(fh).read_row_group(group, columns=[image.bytes_path])
    column = table.column(image.name).combine_chunks()
    return cast(pa.StructArray, column).field("bytes") if image.struct else column


def is_image_table(url: str, options: dict[str, Any] | None = None) -> bool:
    """A Parquet file with a column of image bytes (not a manifest of paths)."""
    try:
        with open_file(url, options) as fh:
            return image_column(pq.ParquetFile(fh).schema_arrow) is not None
    except (OSError, EntryError, pa.ArrowException, TableError):
        return False  # the manifest reader says what is wrong with it


@dataclass
class TableSource(Source):
    """Parquet image tables (one file or a brace pattern of files, local or in a store); an
    entry is a row, keyed by its id column (else ``<file>/<row number>``)."""

    pattern: str
    target_column: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    tokens: dict[str, ChangeToken] = field(default_factory=dict, repr=False)
    columns: dict[str, ImageColumn] = field(default_factory=dict, repr=False)  # per file
    cache: RowGroupCache = field(default_factory=RowGroupCache, repr=False)

    @property
    def root(self) -> str:
        return pattern_root(self.pattern) or "."

    def entries(self) -> list[Entry]:
        found: dict[str, Entry] = {}
        for url in shard_names([self.pattern]):
            fs, path = filesystem(url, self.options)
            try:
                info = fs.info(path)
            except FileNotFoundError:
                continue
            token = ChangeToken(info.get("size") or 0, version_number(change_token(info)))
            try:
                with open_file(url, self.options) as fh:
                    self.columns[url], rows = scan_table(fh, self.target_column)
            except (TableError, pa.ArrowException, OSError, EntryError) as exc:
                raise InputError(f"image table {url}: {exc}") from None
            name = url[len(self.root) + 1 :] if pattern_root(self.pattern) else url
            for number, row in enumerate(rows):
                key = key_text(row.key if row.key is not None else f"{name}/{number}")
                if key in found:
                    raise InputError(f"image table {url}: id {key!r} appears twice")
                found[key] = Entry(key, f"{url}@{row.row_group}:{row.index}", row.target)
                self.tokens[key] = token
        if not self.columns:
            raise InputMissing(f"input {self.pattern}: no table file exists")
        return sorted(found.values())

    def token(self, entry: Entry) -> ChangeToken | None:
        return self.tokens.get(entry.key)

    def open(self, entry: Entry, max_bytes: int = MAX_FILE_BYTES) -> bytes:
        url, _, span = entry.location.rpartition("@")
        group, index = (int(part) for part in span.split(":"))

        def load() -> pa.Array:
            with open_file(url, self.options) as fh:
                return read_image_column(fh, group, self.columns[url])

        data = self.cache.cell(url, group, index, load)
        if data is None:
            raise EntryError("no image bytes in this row (null)")
        if len(data) > max_bytes:
            raise EntryError(f"file too large: {len(data)} bytes exceeds the limit of {max_bytes}")
        return data


__all__ = [
    "ID_COLUMNS",
    "ImageColumn",
    "RowGroupCache",
    "TableError",
    "TableRow",
    "TableSource",
    "id_column",
    "image_column",
    "is_image_table",
    "read_image_column",
    "scan_table",
]
