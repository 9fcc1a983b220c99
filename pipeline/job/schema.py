"""The rows a job writes: one per (image, method, class), one per failed image.

``SCHEMA`` is the Parquet schema of every part file; ``TableBuilder`` collects rows column by
column and builds one Arrow table per batch, maps staying numpy until then.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import numpy as np
import pyarrow as pa

METADATA_KEY = "fdpipe"  # part-file metadata key holding the run record (JSON)
COMPRESSION: Final = "zstd"

SCHEMA = pa.schema(
    [  # type: ignore[arg-type]  # pyarrow-stubs type a list of fields of several types as object
        pa.field("image_path", pa.string(), nullable=False),
        pa.field("image_sha256", pa.string()),
        pa.field("original_width", pa.int32()),
        pa.field("original_height", pa.int32()),
        pa.field("model", pa.string(), nullable=False),
        pa.field("layer", pa.string(), nullable=False),
        pa.field("method", pa.string()),
        pa.field("class_rank", pa.int16()),
        pa.field("class_index", pa.int32()),
        pa.field("class_name", pa.string()),
        pa.field("logit", pa.float32()),
        pa.field("probability", pa.float32()),
        pa.field("map", pa.list_(pa.float32())),
        pa.field("map_height", pa.int32()),
        pa.field("map_width", pa.int32()),
        pa.field("raw_min", pa.float32()),
        pa.field("raw_max", pa.float32()),
        pa.field("map_box", pa.list_(pa.float32())),
        pa.field("weights", pa.list_(pa.float32())),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("seconds", pa.float32()),
        pa.field("targets", pa.string()),
        pa.field("file_size", pa.int64()),
        pa.field("file_mtime_ns", pa.int64()),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)
# Rows of a run for one image: a later run's rows of the same (image_path, method, targets,
# class_rank) supersede them (``fdpipe.job.current``); "pruned" rows mark a removed input.
STATUSES = ("ok", "failed", "pruned")


@dataclass
class ImageInfo:
    key: str
    sha256: str | None
    width: int | None
    height: int | None
    size: int | None = None  # the file's size and mtime when the run listed it: a later run
    mtime_ns: int | None = None  # rehashes the file only when these changed


@dataclass(frozen=True)
class RunStamp:
    """What every row of one run carries."""

    run_id: str  # UTC start time, sortable: a later run's rows supersede an earlier run's
    targets: str  # which classes were explained: "top-1", "top-3" or "classes=281,285"


@dataclass
class TableBuilder:
    """Collects rows column by column; maps stay numpy until one Arrow array is built."""

    model: str
    layer: str
    stamp: RunStamp
    columns: dict[str, list] = field(default_factory=lambda: {name: [] for name in SCHEMA.names})

    def add_failed(self, image: ImageInfo, error: str, seconds: float) -> None:
        self._add(image, status="failed", error=error, seconds=seconds)

    def add_pruned(self, key: str) -> None:
        """A tombstone: ``key`` left the input; readers hide every earlier row of it."""
        self._add(ImageInfo(key, None, None, None), status="pruned", targets=None)

    def add_explained(
        self,
        image: ImageInfo,
        *,
        method: str,
        class_rank: int,
        class_index: int,
        class_name: str,
        logit: float,
        probability: float,
        native_map: np.ndarray,
        weights: np.ndarray | None,
        seconds: float,
        raw_range: np.ndarray | None = None,
        map_box: tuple[float, float, float, float] | None = None,
    ) -> None:
        self._add(
            image,
            method=method,
            class_rank=class_rank,
            class_index=class_index,
            class_name=class_name,
            logit=logit,
            probability=probability,
            map=np.ascontiguousarray(native_map, dtype=np.float32).ravel(),
            map_height=native_map.shape[0],
            map_width=native_map.shape[1],
            raw_min=None if raw_range is None else float(raw_range[0]),
            raw_max=None if raw_range is None else float(raw_range[1]),
            map_box=None if map_box is None else list(map_box),
            weights=None if weights is None else np.asarray(weights, dtype=np.float32).ravel(),
            status="ok",
            seconds=seconds,
        )

    def _add(self, image: ImageInfo, **values: object) -> None:
        values = {"targets": self.stamp.targets} | values
        values |= {
            "run_id": self.stamp.run_id,
            "file_size": image.size,
            "file_mtime_ns": image.mtime_ns,
            "image_path": image.key,
            "image_sha256": image.sha256,
            "original_width": image.width,
            "original_height": image.height,
            "model": self.model,
            "layer": self.layer,
        }
        for name, column in self.columns.items():
            column.append(values.get(name))

    def build(self) -> pa.Table:
        arrays = [
            float_lists(self.columns[f.name])
            if f.name in {"map", "weights"}
            else pa.array(self.columns[f.name], type=f.type)
            for f in SCHEMA
        ]
        return pa.Table.from_arrays(arrays, schema=SCHEMA)


def float_lists(values: list[np.ndarray | None]) -> pa.ListArray:
    """list<float32> from numpy vectors (None -> null) with a single copy of the data."""
    lengths = np.array([0 if v is None else len(v) for v in values], dtype=np.int32)
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    present = [v for v in values if v is not None]
    flat = np.concatenate(present) if present else np.zeros(0, dtype=np.float32)
    mask = pa.array([v is None for v in values], type=pa.bool_())
    return pa.ListArray.from_arrays(
        pa.array(offsets, type=pa.int32()),
        pa.array(flat, type=pa.float32()),
        type=pa.list_(pa.float32()),
        mask=mask,
    )


__all__ = [
    "COMPRESSION",
    "METADATA_KEY",
    "SCHEMA",
    "STATUSES",
    "ImageInfo",
    "RunStamp",
    "TableBuilder",
    "float_lists",
]
