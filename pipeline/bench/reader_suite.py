"""The "reader" bench suite: stored maps read back as ``render`` and ``evaluate --maps`` read
them (their filters checked, then the rows with their maps), through the one reader
(``fdpipe.job.reader``: the current rows worked out once, maps decoded a batch at a time) against
the way they read them before it (each pass working out the current rows again, each row's map
turned into Python floats by ``to_pylist``, then an array), measured in the same run on the same
synthetic output of 10,000 rows (13 x 13 maps)."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fdpipe.bench.report_suite import METHODS, write_synthetic_output
from fdpipe.evaluation.comparison import StoredMaps
from fdpipe.job.current import KEY_COLUMNS, current_mask
from fdpipe.job.reader import ROW_COLUMNS, CurrentRows, MapRow, check_filters, select_rows
from fdpipe.job.table import ResultsTable

if TYPE_CHECKING:  # the package imports this module to register the suite
    from fdpipe.bench import Settings

ROWS = 10_000
TARGET = 3.0  # the bound: the reader at least 3x the per-row decoding


Reader = Callable[[Path], Iterator[MapRow]]
FILTER_COLUMNS = ["image_path", "method", "class_rank", "class_index", "class_name", "status"]


def per_row_batches(output: Path, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """The peer's pass over the current rows, as every reader made it before: the keys of every
    data file read and the current rows worked out again, then each file read whole."""
    parts = ResultsTable(output).data_files()
    keys = [pq.read_table(path, columns=KEY_COLUMNS) for path in parts]
    mask = current_mask(pa.concat_tables(keys))
    start = 0
    for path, part_keys in zip(parts, keys, strict=True):
        keep = mask[start : start + part_keys.num_rows]
        start += part_keys.num_rows
        names = pq.read_schema(path).names
        present = [c for c in columns if c in names]
        yield from pq.read_table(path, columns=present).filter(pa.array(keep)).to_batches()


def per_row_rows(output: Path) -> Iterator[MapRow]:
    """The peer: the filter check, then the rows with every map through ``to_pylist``."""
    checked = pa.Table.from_batches(list(per_row_batches(output, FILTER_COLUMNS)))
    pc.unique(checked["method"])  # what the filter check looked at
    for batch in per_row_batches(output, ROW_COLUMNS):
        keep = pc.equal(batch.column("status"), pa.scalar("ok"))
        for row in batch.filter(keep).to_pylist():
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


def median_seconds(work: Callable[[], object], repeats: int) -> float:
    """Median CPU seconds of this process (all its threads): on a shared machine wall time
    swings with the neighbours' load, CPU time far less."""
    work()  # warm-up: file cache, imports
    times = []
    for _ in range(repeats):
        started = time.process_time()
        work()
        times.append(time.process_time() - started)
    return statistics.median(times)


def reader_suite(settings: Settings) -> dict[str, object]:
    """CPU seconds to read 10,000 stored rows for ``render`` (the rows with their maps) and for
    ``evaluate --maps`` (its in-memory index), per-row decoding against the reader."""
    repeats = min(settings.repeats, 5)
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="fdpipe-bench-reader-") as scratch:
        output = Path(scratch) / "out"
        names = [f"{i:05d}.jpg" for i in range(ROWS // len(METHODS))]
        write_synthetic_output(output, Path(scratch), names)

        def reader_rows(output: Path) -> Iterator[MapRow]:
            current = CurrentRows(output)  # as render and evaluate --maps now read
            check_filters(current, methods=list(METHODS))
            return select_rows(current)

        readers: dict[str, Reader] = {"per_row": per_row_rows, "reader": reader_rows}

        def render(read: Reader) -> object:  # the rows with their maps, as render draws them
            return list(read(output))

        def evaluate(read: Reader) -> object:  # evaluate --maps's in-memory index
            return StoredMaps(read(output))

        for consumer, consume in (("render", render), ("evaluate --maps", evaluate)):
            seconds = {
                name: median_seconds(partial(consume, read), repeats)
                for name, read in readers.items()
            }
            per_row, reader = seconds["per_row"], seconds["reader"]
            rows.append(
                {
                    "case": consumer,
                    "rows": ROWS,
                    "per_row_seconds": per_row,
                    "reader_seconds": reader,
                    "rows_per_second": ROWS / reader,
                    "speedup": per_row / reader,
                }
            )
            click.echo(f"  {consumer}: {per_row:.3f} s per-row, {reader:.3f} s reader")
    met = {f"{row['case']}_{TARGET:g}x": float(row["speedup"]) >= TARGET for row in rows}  # type: ignore[arg-type]
    return {"rows": rows, "targets_met": met}


__all__ = ["ROWS", "TARGET", "per_row_rows", "reader_suite"]
