"""Reading an ``explain`` output for the report, streaming: images one at a time with their
rows, small aggregates (counts, histograms) and the run records.

Nothing here grows with the number of rows except the per-class counts (bounded by the model's
classes).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from fdpipe.job.reader import ROW_COLUMNS, MapRow, Output, current_rows, iter_rows, map_rows
from fdpipe.job.record import read_record, record_files
from fdpipe.job.table import ResultsTable

COLUMNS = [*ROW_COLUMNS, "image_sha256", "error"]  # rows and what the index shows
BINS = 20  # histogram bins over [0, 1] (probabilities) and over log10 seconds


@dataclass
class ImageEntry:
    path: str
    sha256: str | None
    status: str  # "ok" or "failed"
    error: str | None = None
    maps: list[MapRow] = field(default_factory=list)
    rows: int = 0  # rows read into this entry (its maps and its failed row)


def iter_images(output: Output) -> Iterator[ImageEntry]:
    """Each run of consecutive rows of one image, with its explained rows, in stored order (an
    image whose rows lie in several parts, after a rerun, comes in several entries)."""
    current: ImageEntry | None = None
    for batch in iter_rows(output, columns=COLUMNS):
        explained = map_rows(batch)  # the reader's one decoder
        columns = {name: batch.column(name).to_pylist() for name in ("image_sha256", "error")}
        for i, row in enumerate(explained):
            path = batch.column("image_path")[i].as_py() if row is None else row.image_path
            if current is None or current.path != path:
                if current is not None:
                    yield current
                current = ImageEntry(path, columns["image_sha256"][i], "ok")
            current.rows += 1
            if row is None:
                current.status, current.error = "failed", columns["error"][i] or "unknown error"
            else:
                current.maps.append(row)
    if current is not None:
        yield current


def rows_per_image(output: Output) -> dict[str, int]:
    """Current rows per image, in first-seen order, from the key columns the reader holds."""
    keys = current_rows(output).current_keys()
    paths = [] if keys is None else cast(list[str], keys["image_path"].to_pylist())  # not null
    counts: dict[str, int] = {}
    for path in paths:
        counts[path] = counts.get(path, 0) + 1
    return counts


@dataclass
class Histogram:
    low: float
    high: float
    counts: np.ndarray = field(default_factory=lambda: np.zeros(BINS, dtype=np.int64))

    def add(self, value: float) -> None:
        if not math.isfinite(value):
            return
        position = (value - self.low) / (self.high - self.low) * BINS
        self.counts[min(max(int(position), 0), BINS - 1)] += 1


@dataclass
class Aggregates:
    """What the index shows, updated image by image."""

    images: int = 0
    failed: int = 0
    rows: int = 0
    methods: Counter[str] = field(default_factory=Counter)
    classes: Counter[str] = field(default_factory=Counter)  # top-1 class -> images
    top1: Histogram = field(default_factory=lambda: Histogram(0.0, 1.0))
    seconds: dict[str, Histogram] = field(default_factory=dict)  # log10 s, 1 ms .. 100 s

    def add(self, image: ImageEntry) -> None:
        self.images += 1
        self.rows += image.rows
        if image.status == "failed":
            self.failed += 1
            return
        top = [entry for entry in image.maps if entry.class_rank == 0]
        if top:
            self.classes[top[0].class_name] += 1
            self.top1.add(top[0].probability)
        for entry in image.maps:
            self.methods[entry.method] += 1
            histogram = self.seconds.setdefault(entry.method, Histogram(-3.0, 2.0))
            histogram.add(math.log10(max(entry.seconds, 1e-9)))


@dataclass
class RunRecord:
    source: str  # the file it came from
    record: dict[str, object]


def run_records(
    output: str | os.PathLike[str], options: dict[str, Any] | None = None
) -> list[RunRecord]:
    """``OUTPUT/_runs/*.json`` when the job wrote them; otherwise the distinct run records of
    the table's commits (params, versions, run), each with the versions that carry it."""
    records = []
    for name in record_files(output, options):
        try:
            loaded = json.loads(read_record(output, name, options))
        except (OSError, ValueError) as exc:
            records.append(RunRecord(name, {"unreadable": str(exc)}))
            continue
        if isinstance(loaded, dict):
            records.append(RunRecord(name, loaded))
    if records:
        return records
    distinct: dict[str, RunRecord] = {}
    for commit in reversed(ResultsTable(output, options).commits()):
        version = commit.pop("version")
        key = json.dumps(commit, sort_keys=True, default=str)
        if key not in distinct:
            distinct[key] = RunRecord(f"version {version}", {**commit, "versions": []})
        versions = distinct[key].record["versions"]
        assert isinstance(versions, list)
        versions.append(version)
    return list(distinct.values())


__all__ = [
    "BINS",
    "Aggregates",
    "Histogram",
    "ImageEntry",
    "RunRecord",
    "iter_images",
    "rows_per_image",
    "run_records",
]
