"""Reading a job's output back: record batches of its current rows (``fdpipe.job.current``: rows
superseded by a later run are hidden), and the explained rows with their maps as numpy arrays."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import cast

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


def select_rows(
    output: str | os.PathLike[str],
    *,
    methods: Iterable[str] | None = None,
    images: Iterable[str] | None = None,
    ranks: Iterable[int] | None = None,
) -> Iterator[MapRow]:
    """Explained rows of ``output`` in stored order; ``images`` are glob patterns on image_path."""
    patterns = list(images or [])
    for batch in iter_rows(output, columns=ROW_COLUMNS):
        keep = pc.equal(batch.column("status"), pa.scalar("ok"))
        if methods is not None:
            labels = pa.array(list(methods), pa.string())
            keep = pc.and_(keep, pc.is_in(batch.column("method"), value_set=labels))
        if ranks is not None:
            wanted = pa.array(list(ranks), pa.int16())
            keep = pc.and_(keep, pc.is_in(batch.column("class_rank"), value_set=wanted))
        for row in batch.filter(keep).to_pylist():
            if patterns and not any(fnmatchcase(row["image_path"], p) for p in patterns):
                continue
            shape = (row["map_height"], row["map_width"])
            yield MapRow(
                image_path=row["image_path"],
                method=row["method"],
                class_rank=row["class_rank"],
                class_index=row["class_index"],
                class_name=row["class_name"],
                probability=row["probability"],
                native=np.asarray(row["map"], dtype=np.float32).reshape(shape),
                box=tuple(row["map_box"]) if row.get("map_box") else None,
            )


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
    tables = []
    for batch in iter_rows(output):
        keep = pc.equal(batch.column("status"), pa.scalar("ok"))
        if methods is not None:
            keep = pc.and_(keep, pc.is_in(batch.column("method"), pa.array(list(methods))))
        if ranks is not None:
            wanted = pa.array(list(ranks), pa.int16())
            keep = pc.and_(keep, pc.is_in(batch.column("class_rank"), value_set=wanted))
        if wanted_classes is not None:
            by_index = pa.array([c for c in wanted_classes if isinstance(c, int)], pa.int32())
            by_name = pa.array([c for c in wanted_classes if isinstance(c, str)], pa.string())
            either = pc.or_(
                pc.is_in(batch.column("class_index"), value_set=by_index),
                pc.is_in(batch.column("class_name"), value_set=by_name),
            )
            keep = pc.and_(keep, either)
        table = pa.Table.from_batches([batch]).filter(keep)
        if patterns is not None:
            paths = [str(path) for path in table["image_path"].to_pylist()]
            hits = [any(fnmatchcase(path, p) for p in patterns) for path in paths]
            table = table.filter(pa.array(hits, pa.bool_()))
        tables.append(table)
    rows = pa.concat_tables(tables)
    shapes = set(zip(rows["map_height"].to_pylist(), rows["map_width"].to_pylist(), strict=True))
    if len(shapes) > 1 and size == "native":
        found = ", ".join(f"{h}x{w}" for h, w in sorted(shapes))
        raise ValueError(f"maps of several shapes ({found}): choose a method, or size='original'")
    flat = pc.list_flatten(rows["map"]).to_numpy().copy()  # writable, owned
    counts = (rows["map_height"].to_numpy() * rows["map_width"].to_numpy()).astype(np.int64)
    if size == "native":
        h, w = shapes.pop() if shapes else (0, 0)
        maps: np.ndarray | list[np.ndarray] = flat.reshape(
            rows.num_rows, cast(int, h), cast(int, w)
        )
    else:
        import torch
        from fdpipe.kernels.postprocess import upsample_map

        maps = []
        starts = np.concatenate([[0], np.cumsum(counts)])
        columns = ["map_height", "map_width", "original_height", "original_width"]
        for i, row in enumerate(rows.select(columns).to_pylist()):
            native = flat[starts[i] : starts[i + 1]].reshape(row["map_height"], row["map_width"])
            full = (row["original_height"], row["original_width"])
            maps.append(upsample_map(torch.from_numpy(native), full).numpy())
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
    "check_filters",
    "images_root",
    "iter_rows",
    "read_maps",
    "select_rows",
]
