"""Parquet image tables: which column holds images and ids, targets, row-group reads, a real S3
server."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fdpipe.bench.datasets import image_table, write_image_table
from fdpipe.bench.object_store import SeaweedFS
from fdpipe.job.inputs import EntryError, InputError
from fdpipe.job.sources import TableSource, locate
from fdpipe.job.sources.image_table import RowGroupCache, TableError, id_column, image_column

FILES = [(f"cats/img_{i}.jpg", bytes([i]) * (10 + i)) for i in range(7)]


@pytest.mark.parametrize(
    ("schema", "image", "ident"),
    [
        (pa.schema({"image": pa.struct({"bytes": pa.binary(), "path": pa.string()})}),
         ("image", True), "image.path"),
        (pa.schema({"id": pa.int64(), "jpg": pa.large_binary()}), ("jpg", False), "id"),
        (pa.schema({"image_path": pa.string(), "img": pa.binary(), "label": pa.int8()}),
         ("img", False), "image_path"),
        (pa.schema({"img": pa.binary()}), ("img", False), None),
    ],
)  # fmt: skip
def test_columns(schema: pa.Schema, image: tuple[str, bool], ident: str | None) -> None:
    found = image_column(schema)
    assert found is not None and (found.name, found.struct) == image
    assert id_column(schema, found) == ident


def test_no_or_several_image_columns() -> None:
    assert image_column(pa.schema({"path": pa.string()})) is None  # a manifest of paths
    with pytest.raises(TableError, match="several columns hold bytes"):
        image_column(pa.schema({"a": pa.binary(), "b": pa.binary()}))


@pytest.mark.parametrize("struct", [True, False])
def test_local_table_read_by_row_group(tmp_path: Path, struct: bool) -> None:
    table = image_table(FILES, labels=list(range(7)), struct=struct)
    path = write_image_table(table, tmp_path / "t.parquet", row_group_size=3)
    source = locate(str(path), target_column="label")
    assert isinstance(source, TableSource)
    entries = source.entries()
    assert [e.key for e in entries] == [name for name, _ in FILES]
    assert [e.target for e in entries] == [str(i) for i in range(7)]
    assert [e.location.rsplit("@")[1] for e in entries[2:4]] == ["0:2", "1:0"]
    assert [source.open(e) for e in entries] == [data for _, data in FILES]
    assert len(source.cache.groups) == 3  # one read per row group
    with pytest.raises(EntryError, match="too large"):
        source.open(entries[0], max_bytes=3)


def test_table_problems(tmp_path: Path) -> None:
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"img": [b"a", None, b"a"], "x": [1, 2, 3]}), plain)
    source = locate(str(plain))
    assert isinstance(source, TableSource)
    entries = source.entries()  # no id column: rows are numbered
    assert [e.key for e in entries] == ["plain.parquet/0", "plain.parquet/1", "plain.parquet/2"]
    with pytest.raises(EntryError, match="null"):
        source.open(entries[1])
    with pytest.raises(InputError, match="no column 'label'"):
        TableSource(str(plain), "label").entries()
    twice = tmp_path / "twice.parquet"
    pq.write_table(pa.table({"id": ["a", "a"], "img": [b"1", b"2"]}), twice)
    with pytest.raises(InputError, match="appears twice"):
        TableSource(str(twice)).entries()
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"image_path": ["a.jpg"]}), manifest)
    assert locate(str(manifest)) is None  # paths: a manifest, read as local files


def test_cache_is_bounded_and_ships_empty() -> None:
    import pickle

    cache = RowGroupCache(capacity=2)
    loads = []
    for group in [0, 1, 0, 2, 1]:
        cache.cell("f", group, 0, lambda g=group: loads.append(g) or pa.array([b"x"]))
    assert loads == [0, 1, 2, 1] and len(cache.groups) == 2
    assert pickle.loads(pickle.dumps(cache)).groups == {}


def test_remote_table(s3_store: SeaweedFS, tmp_path: Path) -> None:
    path = write_image_table(image_table(FILES), tmp_path / "t.parquet", row_group_size=2)
    bucket = s3_store.new_bucket()
    s3_store.filesystem().put_file(str(path), f"{bucket}/data/train-00000-of-00001.parquet")
    source = locate(f"s3://{bucket}/data/train-00000-of-00001.parquet", None,
                    s3_store.storage_options)  # fmt: skip
    assert isinstance(source, TableSource)
    entries = source.entries()
    assert [source.open(e) for e in entries] == [data for _, data in FILES]
