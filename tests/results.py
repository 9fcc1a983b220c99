"""An explain output read back as the tests need it (its commits, its newest run record, its
rows), or damaged as a disk would damage it."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from fdpipe.job.table import ResultsTable


def commit_versions(output: Path) -> list[int]:
    """The table versions fdpipe committed, oldest first (none when there is no table)."""
    return sorted(int(c["version"]) for c in ResultsTable(output).commits())  # type: ignore[call-overload]


def run_metadata(output: Path) -> dict[str, object]:
    """The run record of the newest commit (params, versions, run)."""
    return ResultsTable(output).metadata()


def stored_rows(output: Path) -> pa.Table:
    """Every current row, every column."""
    return ResultsTable(output).rows()


def duckdb_sql(query: str) -> pa.Table:
    """``query``'s result from DuckDB with the delta extension loaded from the
    ``duckdb-ext-delta`` package (no download: the test extra installs it beside a matching
    duckdb)."""
    import duckdb

    root = Path(duckdb.__file__).parents[1] / "duckdb_ext" / "extensions"
    found = sorted(root.glob(f"v{duckdb.__version__}/*/delta.duckdb_extension"))
    assert found, f"no delta extension for duckdb {duckdb.__version__} under {root}"
    with duckdb.connect() as connection:
        connection.execute(f"LOAD '{found[0]}'")
        return connection.sql(query).to_arrow_table()


def data_files(output: Path) -> list[Path]:
    """The current data files, in the order their commits added them (one per part)."""
    table = ResultsTable(output)
    current, seen, ordered = set(table.data_files()), set(), []
    for version in commit_versions(output):
        for path in table.data_files(version):
            if path not in seen:
                seen.add(path)
                ordered.append(path)
    return [path for path in ordered if path in current]


def flip_pages(part: Path, column: str) -> None:
    """Up to 400 bytes in the middle of ``column``'s data pages flipped, the footer intact."""
    meta = pq.ParquetFile(part).metadata
    names = [meta.schema.column(i).path for i in range(meta.num_columns)]
    chunk = meta.row_group(0).column(names.index(column))
    start, size = chunk.data_page_offset, chunk.total_compressed_size
    count = min(400, size // 2)
    middle = start + (size - count) // 2
    data = bytearray(part.read_bytes())
    data[middle : middle + count] = bytes(b ^ 0xFF for b in data[middle : middle + count])
    part.write_bytes(bytes(data))
    pq.read_metadata(part)  # the footer still reads
