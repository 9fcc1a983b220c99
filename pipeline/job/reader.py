"""Reading a job's output back, the one way every reader takes (``read_maps``, ``render``,
``evaluate --maps``, ``report``): record batches of its current rows (``fdpipe.job.current``:
rows superseded by a later run are hidden), one row filter (``RowFilter``) and one vectorised map
decoder (``decode_maps``: one copy per batch, a view per row, no per-value Python objects)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from fdpipe.job.current import KEY_COLUMNS, current_mask
from fdpipe.job.parts import OutputDataset, read_metadata, read_part, read_schema

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


def iter_rows(
    directory: str | os.PathLike[str], columns: list[str] | None = None
) -> Iterator[pa.RecordBatch]:
    """Record batches of the current rows, in part order (rows of an image stay together)."""
    parts = OutputDataset(directory).parts()
    keys = [read_part(path, columns=KEY_COLUMNS) for path in parts]  # names a bad file
    if not keys:
        return
    mask = current_mask(pa.concat_tables(keys))
    start = 0
    for path, part_keys in zip(parts, keys, strict=True):
        keep = mask[start : start + part_keys.num_rows]
        start += part_keys.num_rows
        if keep.any():
            names = read_schema(path).names  # outputs written before a column existed lack it
            present = [c for c in columns if c in names] if columns else None
            yield from read_part(path, columns=present).filter(pa.array(keep)).to_batches()


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
    output: str | os.PathLike[str], wanted: RowFilter, columns: list[str] | None = None
) -> Iterator[pa.RecordBatch]:
    """The current rows of ``output`` that ``wanted`` keeps, batch by batch in stored order."""
    for batch in iter_rows(output, columns=columns):
        yield batch.filter(wanted.mask(batch))


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
    starts = (offsets - first).tolist()
    heights, widths = (  # a failed row's null shape reads as NaN: 0 here, never used
        np.nan_to_num(rows.column(name).to_numpy(zero_copy_only=False)).astype(int).tolist()
        for name in ("map_height", "map_width")
    )
    valid = maps.is_valid().to_numpy(zero_copy_only=False).tolist()
    return [
        owned[starts[i] : starts[i + 1]].reshape(heights[i], widths[i]) if valid[i] else None
        for i in range(len(rows))
    ]


def map_rows(rows: pa.RecordBatch | pa.Table) -> list[MapRow | None]:
    """Each row of ``rows`` (columns ``ROW_COLUMNS``) as a ``MapRow``, its map decoded by
    ``decode_maps``; None where the row explains nothing (a failed row)."""
    maps = decode_maps(rows)
    names = set(rows.column_names)
    columns: dict[str, list[Any]] = {
        name: rows.column(name).to_pylist() if name in names else [None] * len(rows)
        for name in ROW_COLUMNS
        if name != "map"
    }
    found: list[MapRow | None] = []
    for i, native in enumerate(maps):
        if native is None or columns["status"][i] != "ok":
            found.append(None)
            continue
        box = columns["map_box"][i]
        height, width = columns["original_height"][i], columns["original_width"][i]
        found.append(
            MapRow(
                image_path=columns["image_path"][i],
                method=columns["method"][i],
                class_rank=columns["class_rank"][i],
                class_index=columns["class_index"][i],
                class_name=columns["class_name"][i] or str(columns["class_index"][i]),
                probability=columns["probability"][i],
                native=native,
                box=tuple(box) if box else None,
                frame=(height, width) if box and height and width else None,
                seconds=columns["seconds"][i] or 0.0,
            )
        )
    return found


def select_rows(
    output: str | os.PathLike[str],
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


class FilterError(ValueError):
    """A method, class, rank or image filter that matches nothing in the output."""


def check_filters(
    output: str | os.PathLike[str],
    *,
    methods: Iterable[str] | None = None,
    images: Iterable[str] | None = None,
    ranks: Iterable[int] | None = None,
    classes: Iterable[int | str] | None = None,
) -> None:
    """Every filter value must match some explained row: a typo is an error, not empty output."""
    columns = ["image_path", "method", "class_rank", "class_index", "class_name", "status"]
    batches = list(iter_rows(output, columns=columns))
    if not batches:
        raise FilterError(f"{output} holds no rows (no part files)")
    table = pa.Table.from_batches(batches)
    table = table.filter(pc.equal(table["status"], pa.scalar("ok")))

    def present(column: str) -> list:
        return sorted(pc.unique(table[column]).to_pylist())

    stored_methods = present("method")
    for method in methods or ():
        if method not in stored_methods:
            raise FilterError(
                f"method {method!r} is not in {output}; it holds {', '.join(stored_methods)}"
            )
    for rank in ranks or ():
        if rank not in (stored := present("class_rank")):
            raise FilterError(f"no class rank {rank} in {output}; it holds ranks {stored}")
    indices, names = set(present("class_index")), set(present("class_name"))
    for wanted in classes or ():
        if wanted not in (indices if isinstance(wanted, int) else names):
            raise FilterError(f"class {wanted!r} is not explained in {output}")
    paths = present("image_path") if images else []
    for pattern in images or ():
        if not any(fnmatchcase(path, pattern) for path in paths):
            raise FilterError(f"no image of {output} matches {pattern!r}")


def read_maps(
    output: str | os.PathLike[str],
    method: str | Iterable[str] | None = None,
    *,
    classes: Iterable[int | str] | None = None,
    images: str | Iterable[str] | None = None,
    ranks: Iterable[int] | None = None,
    size: str = "native",
) -> tuple[np.ndarray | list[np.ndarray], pa.Table]:
    """The current explained maps of an output and their rows: ``(maps, rows)``.

    ``maps``: float32 ``(N, h, w)`` in [0, 1] at the layer's resolution (``size="native"``), or
    with ``size="original"`` a list of ``(original_height, original_width)`` maps, each brought
    to its image's size (bilinear, min-max again: what ``render`` overlays). ``rows``: a pyarrow
    table of the same N rows, every column but ``map`` (integers stay integers). Filters:
    method labels, class indices or names, image paths or globs, class ranks; a filter value
    that matches nothing raises ``FilterError``.
    """
    if size not in {"native", "original"}:
        raise ValueError(f"size must be 'native' or 'original', got {size!r}")
    methods = [method] if isinstance(method, str) else method
    patterns = [images] if isinstance(images, str) else images
    wanted_classes = list(classes) if classes is not None else None
    check_filters(output, methods=methods, images=patterns, ranks=ranks, classes=wanted_classes)
    wanted = RowFilter(
        methods=None if methods is None else list(methods),
        images=None if patterns is None else list(patterns),
        ranks=None if ranks is None else list(ranks),
        classes=wanted_classes,
    )
    batches = list(filtered_rows(output, wanted))
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


def images_root(output: str | os.PathLike[str]) -> Path:
    """The directory image paths are relative to, as the job recorded it."""
    parts = OutputDataset(output).parts()
    if not parts:
        raise FileNotFoundError(f"{output} holds no part files")
    run = read_metadata(parts[0])["run"]
    assert isinstance(run, dict)
    return Path(run["input_root"])


__all__ = [
    "ROW_COLUMNS",
    "FilterError",
    "MapRow",
    "RowFilter",
    "check_filters",
    "decode_maps",
    "filtered_rows",
    "images_root",
    "iter_rows",
    "map_rows",
    "read_maps",
    "select_rows",
]
