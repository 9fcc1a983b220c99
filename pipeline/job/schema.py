"""The rows a job writes: one per (image, method, class), one per failed image.

``SCHEMA`` is the Parquet schema of every part file (``fdpipe.job.rows`` builds its columns);
``ImageInfo`` is what a row says about its image, ``RunStamp`` what it says about its run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

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
        # Added in 0.2 (issue 19): tables written before lack it and read it as null; the first
        # commit after adds it to the table's schema (Delta schema evolution, ``merge``).
        pa.field("target_role", pa.string()),  # "label", "prediction", "both" (see README)
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
    size: int | None = None  # the entry's change token when the run listed it (a file's size
    mtime_ns: int | None = None  # and mtime): a later run rehashes it only when this moved


@dataclass(frozen=True)
class RunStamp:
    """What every row of one run carries."""

    run_id: str  # UTC start time, sortable: a later run's rows supersede an earlier run's
    targets: str  # which classes were explained: "top-1", "top-3" or "classes=281,285"


__all__ = [
    "COMPRESSION",
    "METADATA_KEY",
    "SCHEMA",
    "STATUSES",
    "ImageInfo",
    "RunStamp",
]
