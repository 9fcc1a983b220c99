"""Reading a job's output back, the one way every reader takes (``read_maps``, ``render``,
``evaluate --maps``, ``report``): record batches of its current rows (a version of its results
table, ``fdpipe.job.table``), one row filter (``RowFilter``) and one vectorised map
decoder (``decode_maps``: one copy per batch, a view per row, no per-value Python objects)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from fdpipe.errors import FdpipeError
from fdpipe.job import checksums
from fdpipe.job.current import KEY_COLUMNS
from fdpipe.job.inputs import key_file
from fdpipe.job.table import DataFileError, ResultsTable

log = logging.getLogger("fdpipe.job")

ROW_COLUMNS = [
    "image_path",
    "method",
    "class_rank",
    "class_index",
    "class_name",
    "probability",
    "map",
    "map_height",
    "map_width",
    "map_box",
    "original_height",
    "original_width",
    "seconds",
    "status",
]


@dataclass
class MapRow:
    image_path: str
    method: str
    class_rank: int
    class_index: int
    class_name: str
    probability: float
    native: np.ndarray  # (h, w) in [0, 1]
    box: tuple[float, float, float, float] | None = None  # what the map covers (a centre crop)
    frame: tuple[int, int] | None = None  # (height, width) of the image ``box`` is given in
    seconds: float = 0.0


class CurrentRows:
    """An output's current rows (its results table at a version, the newest by default), opened
    once: a command that checks its filters and then reads rows reads the key columns once.

    A data file that does not decode, whose content differs from the sha256 recorded when fdpipe
    wrote it (``fdpipe.job.checksums``), or whose maps are not finite and in [0, 1] (altered
    pages behind an intact footer), is named in a warning and skipped."""

    def __init__(
        self,
        output: str | os.PathLike[str],
        version: int | str | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.output = output
        self.version = version
        table = ResultsTable(output, options)  # options: a store's (fsspec's names)
        table.refuse_legacy()
        self.dataset = table.dataset(version) if table.exists() else None
        self.skipped: list[str] = [str(path) for path in table.missing]
        self.local = not table.remote
        self.verified: dict[str, str | None] = {}  # data file -> why it is damaged, or None
        keys = list(self.parts(KEY_COLUMNS))
        self.keys = pa.concat_tables(keys) if keys and sum(k.num_rows for k in keys) else None
        if self.skipped and not keys:  # "0 images" would read as an empty night
            raise DataFileError(
                f"{output}: none of its {len(self.skipped)} data file(s) can be read (damaged "
                f"or missing, e.g. {self.skipped[0]}); `fdpipe explain` again redoes their images"
            )

    def current_keys(self) -> pa.Table | None:
        """The key columns (``KEY_COLUMNS``) of the current rows; None when there are none."""
        return self.keys

    def batches(self, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        """Record batches of the current rows, file by file (the rows of an image stay together:
        each commit writes them at once)."""
        for part in self.parts(columns):
            yield from part.to_batches()

    def parts(self, columns: list[str] | None) -> Iterator[pa.Table]:
        if self.dataset is None:
            return
        schema = self.dataset.schema
        present = [c for c in columns if c in schema.names] if columns else None
        for fragment in self.dataset.get_fragments():
            path = fragment.path
            if self.local and path not in self.verified:  # each file hashed once
                self.verified[path] = checksums.mismatch(Path(path))
            if damaged := self.verified.get(path):
                log.warning("%s: skipped (%s)", path, damaged)
                if path not in self.skipped:
                    self.skipped.append(path)
                continue
            try:
                part = fragment.to_table(columns=present, schema=schema)
                if "map" in part.column_names:
                    check_maps(Path(fragment.path), part["map"])
            except (pa.ArrowException, OSError, DataFileError) as exc:
                log.warning("%s: skipped (%s)", fragment.path, exc)
                if fragment.path not in self.skipped:
                    self.skipped.append(fragment.path)
                continue
            yield part


def check_maps(path: Path, maps: pa.ChunkedArray) -> None:
    """Stored maps are finite and in [0, 1] (the job checks it before writing): values outside
    were not written by fdpipe (bit rot, a tampered file). DataFileError naming the file."""
    values = pc.list_flatten(maps)
    if len(values) == 0:
        return
    low, high = pc.min_max(values).values()
    if pc.any(pc.is_nan(values)).as_py() or not 0.0 <= low.as_py() <= high.as_py() <= 1.0:
        raise DataFileError(f"{path}: maps outside [0, 1] (from {low} to {high}): damaged pages")


Output = str | os.PathLike[str] | CurrentRows  # a path, or its current rows already worked out


def current_rows(output: Output) -> CurrentRows:
    return output if isinstance(output, CurrentRows) else CurrentRows(output)


def iter_rows(
    output: Output, columns: list[str] | None = None, version: int | str | None = None
) -> Iterator[pa.RecordBatch]:
    """Record batches of the current rows (of ``version``: a table version or an ISO timestamp;
    the newest by default); the rows of an image stay together."""
    stored = output if isinstance(output, CurrentRows) else CurrentRows(output, version)
    return stored.batches(columns)


@dataclass(frozen=True)
class RowFilter:
    """Which explained rows a reader wants: method labels, image globs, class ranks, class
    indices or names (None: all); failed rows never pass."""

    methods: list[str] | None = None
    images: list[str] | None = None
    ranks: list[int] | None = None
    classes: list[int | str] | None = None

    def mask(self, batch: pa.RecordBatch) -> pa.BooleanArray:
        keep = pc.equal(batch.column("status"), pa.scalar("ok"))
        if self.methods is not None:
            labels = pa.array(self.methods, pa.string())
            keep = pc.and_(keep, pc.is_in(batch.column("method"), value_set=labels))
        if self.ranks is not None:
            wanted = pa.array(self.ranks, pa.int16())
            keep = pc.and_(keep, pc.is_in(batch.column("class_rank"), value_set=wanted))
        if self.classes is not None:
            by_index = pa.array([c for c in self.classes if isinstance(c, int)], pa.int32())
            by_name = pa.array([c for c in self.classes if isinstance(c, str)], pa.string())
            either = pc.or_(
                pc.is_in(batch.column("class_index"), value_set=by_index),
                pc.is_in(batch.column("class_name"), value_set=by_name),
            )
            keep = pc.and_(keep, either)
        if self.images is not None:  # each distinct path matched once, not each row
            paths = cast(list[str], pc.unique(batch.column("image_path")).to_pylist())
            hits = [p for p in paths if any(fnmatchcase(p, g) for g in self.images)]
            keep = pc.and_(keep, pc.is_in(batch.column("image_path"), pa.array(hits, pa.string())))
        return keep


def filtered_rows(
    output: Output, wanted: RowFilter, columns: list[str] | None = None
) -> Iterator[pa.RecordBatch]:
    """The current rows of ``output`` that ``wanted`` keeps, batch by batch in stored order."""
    for batch in iter_rows(output, columns=columns):
        keep = wanted.mask(batch)
        yield batch if keep.false_count == 0 else batch.filter(keep)


def decode_maps(rows: pa.RecordBatch | pa.Table) -> list[np.ndarray | None]:
    """Each row's map as a (map_height, map_width) float32 array (None for a failed row): one
    copy of the batch's values, then a view per row (writable: torch can take it as it is)."""
    column = rows.column("map")
    maps = cast(
        pa.ListArray, column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    )
    offsets = maps.offsets.to_numpy()  # absolute into ``maps.values``, also for a slice
    first = int(offsets[0]) if len(offsets) else 0
    values = maps.values.slice(first, int(offsets[-1]) - first if len(offsets) else 0)
    owned = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=True)
    valid = maps.is_valid().to_numpy(zero_copy_only=False)
    heights, widths = (  # a failed row's null shape reads as NaN: 0 here, never used
        np.nan_to_num(rows.column(name).to_numpy(zero_copy_only=False)).astype(np.int64)
        for name in ("map_height", "map_width")
    )
    if valid.any():
        height, width = int(heights[valid][0]), int(widths[valid][0])
        lengths = np.diff(offsets)
        if (lengths == np.where(valid, height * width, 0)).all() and (
            (heights[valid] == height).all() and (widths[valid] == width).all()
        ):  # one shape (the usual case): one reshape
            stacked = iter(owned.reshape(-1, height, width))
            return [next(stacked) if ok else None for ok in valid.tolist()]
    starts = (offsets - first).tolist()
    return [
        owned[starts[i] : starts[i + 1]].reshape(heights[i], widths[i]) if ok else None
        for i, ok in enumerate(valid.tolist())
    ]


def map_rows(rows: pa.RecordBatch | pa.Table) -> list[MapRow | None]:
    """Each row of ``rows`` (columns ``ROW_COLUMNS``) as a ``MapRow``, its map decoded by
    ``decode_maps``; None where the row explains nothing (a failed row)."""
    names = set(rows.column_names)
    missing = [None] * len(rows)  # a column that outputs written before it existed lack
    columns = [
        rows.column(name).to_pylist() if name in names else missing
        for name in (
            "image_path", "method", "class_rank", "class_index", "class_name", "probability",
            "map_box", "original_height", "original_width", "seconds", "status",
        )
    ]  # fmt: skip
    found: list[MapRow | None] = []
    for (
        native,
        path,
        method,
        rank,
        index,
        name,
        probability,
        box,
        height,
        width,
        seconds,
        status,
    ) in zip(decode_maps(rows), *columns, strict=True):
        if native is None or status != "ok":
            found.append(None)
            continue
        found.append(
            MapRow(
                path,
                method,
                rank,
                index,
                name or str(index),
                probability,
                native,
                tuple(box) if box else None,
                (height, width) if box and height and width else None,
                seconds or 0.0,
            )
        )
    return found


def select_rows(
    output: Output,
    *,
    methods: Iterable[str] | None = None,
    images: Iterable[str] | None = None,
    ranks: Iterable[int] | None = None,
) -> Iterator[MapRow]:
    """Explained rows of ``output`` in stored order; ``images`` are glob patterns on image_path."""
    wanted = RowFilter(
        methods=None if methods is None else list(methods),
        images=None if images is None else list(images) or None,
        ranks=None if ranks is None else list(ranks),
    )
    for batch in filtered_rows(output, wanted, ROW_COLUMNS):
        yield from (row for row in map_rows(batch) if row is not None)


class FilterError(FdpipeError, ValueError):
    """A method, class, rank or image filter that matches nothing in the output."""


def check_filters(
    output: Output,
    *,
    methods: Iterable[str] | None = None,
    images: Iterable[str] | None = None,
    ranks: Iterable[int] | None = None,
    classes: Iterable[int | str] | None = None,
) -> None:
    """Every filter value must match some explained row: a typo is an error, not empty output.
    Methods, ranks and images are checked on the key columns already read; classes read theirs."""
    stored = current_rows(output)
    name = stored.output
    keys = stored.current_keys()
    if keys is None:
        raise FilterError(f"{name} holds no rows")
    keys = keys.filter(pc.equal(keys["status"], pa.scalar("ok")))

    def present(table: pa.Table, column: str) -> list:
        return sorted(pc.unique(table[column]).to_pylist())

    stored_methods = present(keys, "method")
    for method in methods or ():
        if method not in stored_methods:
            raise FilterError(
                f"method {method!r} is not in {name}; it holds {', '.join(stored_methods)}"
            )
    for rank in ranks or ():
        if rank not in (ranked := present(keys, "class_rank")):
            raise FilterError(f"no class rank {rank} in {name}; it holds ranks {ranked}")
    wanted_classes = list(classes or ())
    if wanted_classes:
        batches = list(stored.batches(["class_index", "class_name", "status"]))
        table = pa.Table.from_batches(batches)
        table = table.filter(pc.equal(table["status"], pa.scalar("ok")))
        indices, names = set(present(table, "class_index")), set(present(table, "class_name"))
        for wanted in wanted_classes:
            if wanted not in (indices if isinstance(wanted, int) else names):
                raise FilterError(f"class {wanted!r} is not explained in {name}")
    paths = present(keys, "image_path") if images else []
    for pattern in images or ():
        if not any(fnmatchcase(path, pattern) for path in paths):
            raise FilterError(f"no image of {name} matches {pattern!r}")


def read_maps(
    output: str | os.PathLike[str],
    method: str | Iterable[str] | None = None,
    *,
    classes: Iterable[int | str] | None = None,
    images: str | Iterable[str] | None = None,
    ranks: Iterable[int] | None = None,
    size: str = "native",
    version: int | str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> tuple[np.ndarray | list[np.ndarray], pa.Table]:
    """The current explained maps of an output and their rows: ``(maps, rows)``.

    ``maps``: float32 ``(N, h, w)`` in [0, 1] at the layer's resolution (``size="native"``), or
    with ``size="original"`` a list of ``(original_height, original_width)`` maps, each brought
    to its image's size (bilinear, min-max again: what ``render`` overlays). ``rows``: a pyarrow
    table of the same N rows, every column but ``map`` (integers stay integers). Filters:
    method labels, class indices or names, image paths or globs, class ranks; a filter value
    that matches nothing raises ``FilterError``. ``version``: read an earlier version of the
    results table (a version number or an ISO timestamp; default: the newest). An output on
    an object store (``s3://bucket/prefix``) is read with ``storage_options`` (fsspec's names,
    as ``explain --storage-option`` takes them) or the standard environment (``AWS_*``).
    """
    if size not in {"native", "original"}:
        raise ValueError(f"size must be 'native' or 'original', got {size!r}")
    methods = [method] if isinstance(method, str) else method
    patterns = [images] if isinstance(images, str) else images
    wanted_classes = list(classes) if classes is not None else None
    stored = CurrentRows(output, version, storage_options)
    check_filters(stored, methods=methods, images=patterns, ranks=ranks, classes=wanted_classes)
    wanted = RowFilter(
        methods=None if methods is None else list(methods),
        images=None if patterns is None else list(patterns),
        ranks=None if ranks is None else list(ranks),
        classes=wanted_classes,
    )
    batches = list(filtered_rows(stored, wanted))
    rows = pa.Table.from_batches(batches)
    shapes = set(zip(rows["map_height"].to_pylist(), rows["map_width"].to_pylist(), strict=True))
    if len(shapes) > 1 and size == "native":
        found = ", ".join(f"{h}x{w}" for h, w in sorted(shapes))
        raise ValueError(f"maps of several shapes ({found}): choose a method, or size='original'")
    natives = [m for batch in batches for m in decode_maps(batch) if m is not None]
    if size == "native":
        h, w = shapes.pop() if shapes else (0, 0)
        maps: np.ndarray | list[np.ndarray] = (
            np.stack(natives) if natives else np.zeros((0, cast(int, h), cast(int, w)), np.float32)
        )
    else:
        import torch
        from fdpipe.kernels.postprocess import place_map

        columns = ["original_height", "original_width", "map_box"]
        placed = zip(natives, *(rows[c].to_pylist() for c in columns), strict=True)
        maps = [
            place_map(torch.from_numpy(native), (height, width), box).numpy()
            for native, height, width, box in placed
        ]
    return maps, rows.drop_columns(["map"])


def images_root(output: str | os.PathLike[str], options: dict[str, Any] | None = None) -> Path:
    """The directory image paths are relative to, as the job recorded it."""
    run = ResultsTable(output, options).metadata().get("run")
    if not isinstance(run, dict) or "input_root" not in run:
        raise FileNotFoundError(f"{output} holds no fdpipe results table")
    return Path(run["input_root"])


def image_file(output: str | os.PathLike[str], image_path: str) -> Path:
    """The file a row's ``image_path`` was read from: under the recorded input root, with a
    name that is not UTF-8 (stored with ``\\xNN`` escapes) turned back into its bytes."""
    return key_file(images_root(output), image_path)


__all__ = [
    "ROW_COLUMNS",
    "CurrentRows",
    "FilterError",
    "MapRow",
    "Output",
    "RowFilter",
    "check_filters",
    "current_rows",
    "decode_maps",
    "filtered_rows",
    "image_file",
    "images_root",
    "iter_rows",
    "map_rows",
    "read_maps",
    "select_rows",
]
