"""Listing a job's inputs: directory walk, list files, manifests, sorting and sharding."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fdpipe.job.inputs import (
    InputError,
    InputItem,
    collect_inputs,
    parse_shard,
    select_shard,
    shard_of,
)


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_directory_walk_is_recursive_sorted_and_filtered(tmp_path: Path) -> None:
    for name in (
        "b.jpg",
        "a.PNG",
        "sub/c.jpeg",
        "sub/deeper/d.webp",
        "notes.txt",
        ".hidden.jpg",
        ".cache/e.jpg",
        "README",
    ):
        touch(tmp_path / name)
    listed = collect_inputs(tmp_path)
    assert [item.key for item in listed.items] == [
        "a.PNG",
        "b.jpg",
        "sub/c.jpeg",
        "sub/deeper/d.webp",
    ]
    assert listed.root == tmp_path.resolve()
    assert all(item.path == listed.root / item.key for item in listed.items)


def test_list_file_relative_absolute_comments_duplicates(tmp_path: Path) -> None:
    absolute = touch(tmp_path / "elsewhere" / "z.jpg")
    listing = tmp_path / "lists" / "todo.txt"
    listing.parent.mkdir()
    listing.write_text(f"# nightly batch\nimgs/b.jpg\n\nimgs/a.jpg\n{absolute}\nimgs/b.jpg\n")
    listed = collect_inputs(listing)
    assert [item.key for item in listed.items] == [str(absolute), "imgs/a.jpg", "imgs/b.jpg"]
    assert listed.items[0].path == absolute
    assert listed.items[1].path == listing.parent.resolve() / "imgs/a.jpg"


def test_csv_and_parquet_manifests(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("label,path\ncat,x/2.jpg\ndog,x/1.jpg\n")
    assert [i.key for i in collect_inputs(tmp_path / "m.csv").items] == ["x/1.jpg", "x/2.jpg"]
    pq.write_table(pa.table({"image_path": ["q.png", "p.png"]}), tmp_path / "m.parquet")
    assert [i.key for i in collect_inputs(tmp_path / "m.parquet").items] == ["p.png", "q.png"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("m.csv", "label,url\ncat,x.jpg\n", "no path column"),
        ("m.json", "[]", "expected a directory"),
    ],
)
def test_bad_manifest(tmp_path: Path, name: str, content: str, message: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(InputError, match=message):
        collect_inputs(tmp_path / name)


def test_missing_input(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        collect_inputs(tmp_path / "nope")


@pytest.mark.parametrize(("text", "expected"), [("0/1", (0, 1)), ("3/4", (3, 4))])
def test_parse_shard(text: str, expected: tuple[int, int]) -> None:
    assert parse_shard(text) == expected


@pytest.mark.parametrize("text", ["4/4", "-1/2", "1", "a/b", "1/2/3"])
def test_parse_shard_rejects(text: str) -> None:
    with pytest.raises(InputError, match="shard"):
        parse_shard(text)


@pytest.mark.parametrize("count", [2, 3, 7])
def test_shards_partition_the_input(tmp_path: Path, count: int) -> None:
    for i in range(60):
        touch(tmp_path / f"{i:02d}.jpg")
    items = collect_inputs(tmp_path).items
    shards = [select_shard(items, index, count) for index in range(count)]
    keys = [item.key for shard in shards for item in shard]
    assert sorted(keys) == [item.key for item in items]  # disjoint and complete
    assert all(shard == sorted(shard) for shard in shards)  # each shard keeps the order
    assert min(len(shard) for shard in shards) > 0


def test_growing_dataset_keeps_shard_assignments() -> None:
    # Round-robin on the sorted list would move images between shards when files are added.
    every = [InputItem(f"{i:03d}.jpg", Path(f"{i:03d}.jpg")) for i in range(40)]
    items, grown = every[::2], every
    for index in range(3):
        before = select_shard(items, index, 3)
        assert before == [item for item in select_shard(grown, index, 3) if item in items]
        assert all(shard_of(item.key, 3) == index for item in before)
