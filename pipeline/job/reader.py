"""Reading a job's output back: record batches of its current rows (``fdpipe.job.current``: rows
superseded by a later run are hidden), and the explained rows with their maps as numpy arrays."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fdpipe.job.current import KEY_COLUMNS, current_mask
from fdpipe.job.parts import OutputDataset, read_metadata

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


def iter_rows(
    directory: str | os.PathLike[str], columns: list[str] | None = None
) -> Iterator[pa.RecordBatch]:
    """Record batches of the current rows, in part order (rows of an image stay together)."""
    parts = OutputDataset(directory).parts()
    keys = [pq.read_table(path, columns=KEY_COLUMNS) for path in parts]
    if not keys:
        return
    mask = current_mask(pa.concat_tables(keys))
    start = 0
    for path, part_keys in zip(parts, keys, strict=True):
        keep = mask[start : start + part_keys.num_rows]
        start += part_keys.num_rows
        if keep.any():
            yield from pq.read_table(path, columns=columns).filter(pa.array(keep)).to_batches()


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
        keep = pc.equal(batch.column("status"), "ok")
        if methods is not None:
            wanted = pa.array(list(methods), pa.string())
            keep = pc.and_(keep, pc.is_in(batch.column("method"), value_set=wanted))
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
            )


def images_root(output: str | os.PathLike[str]) -> Path:
    """The directory image paths are relative to, as the job recorded it."""
    parts = OutputDataset(output).parts()
    if not parts:
        raise FileNotFoundError(f"{output} holds no part files")
    return Path(read_metadata(parts[0])["run"]["input_root"])


__all__ = ["ROW_COLUMNS", "MapRow", "images_root", "iter_rows", "select_rows"]
