"""A job's inputs: the source interface, directory walk, list files, manifests, sorting and
sharding."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fdpipe.job.inputs import (
    ChangeToken,
    Entry,
    EntryError,
    FileSource,
    InputError,
    InputMissing,
    parse_shard,
    select_shard,
    shard_of,
)
from fdpipe.job.sources import open_source
from image_files import write_images


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
    source = open_source(tmp_path)
    assert [entry.key for entry in source.entries()] == [
        "a.PNG",
        "b.jpg",
        "sub/c.jpeg",
        "sub/deeper/d.webp",
    ]
    assert source.root == str(tmp_path.resolve())
    assert all(Path(e.location) == tmp_path.resolve() / e.key for e in source.entries())


def test_list_file_relative_absolute_comments_duplicates(tmp_path: Path) -> None:
    absolute = touch(tmp_path / "elsewhere" / "z.jpg")
    listing = tmp_path / "lists" / "todo.txt"
    listing.parent.mkdir()
    listing.write_text(f"# nightly batch\nimgs/b.jpg\n\nimgs/a.jpg\n{absolute}\nimgs/b.jpg\n")
    entries = open_source(listing).entries()
    assert [entry.key for entry in entries] == [str(absolute), "imgs/a.jpg", "imgs/b.jpg"]
    assert Path(entries[0].location) == absolute
    assert Path(entries[1].location) == listing.parent.resolve() / "imgs/a.jpg"


def test_csv_and_parquet_manifests(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("label,path\ncat,x/2.jpg\ndog,x/1.jpg\n")
    assert [i.key for i in open_source(tmp_path / "m.csv").entries()] == ["x/1.jpg", "x/2.jpg"]
    pq.write_table(pa.table({"image_path": ["q.png", "p.png"]}), tmp_path / "m.parquet")
    assert [i.key for i in open_source(tmp_path / "m.parquet").entries()] == ["p.png", "q.png"]


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
        open_source(tmp_path / name).entries()


def test_missing_input(tmp_path: Path) -> None:
    with pytest.raises(InputMissing, match="does not exist"):
        open_source(tmp_path / "nope").entries()


def test_a_fifo_as_input_is_refused_not_read(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "todo.txt")  # reading it would block forever
    with pytest.raises(InputError, match="not a directory or a regular file"):
        open_source(tmp_path / "todo.txt").entries()


def test_a_source_opens_bytes_and_tokens_follow_writes(tmp_path: Path) -> None:
    source = FileSource(tmp_path)
    (tmp_path / "a.jpg").write_bytes(b"first")
    (entry,) = source.entries()
    assert source.open(entry) == b"first"
    before = source.token(entry)
    assert before == ChangeToken(5, (tmp_path / "a.jpg").stat().st_mtime_ns)
    (tmp_path / "a.jpg").write_bytes(b"second!")
    assert source.token(entry) != before and source.open(entry) == b"second!"
    with pytest.raises(EntryError, match="file too large"):
        source.open(entry, max_bytes=3)
    (tmp_path / "a.jpg").unlink()
    assert source.token(entry) is None
    with pytest.raises(OSError):
        source.open(entry)


def test_a_source_refuses_fifos_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "b.jpg")
    (entry,) = FileSource(tmp_path).entries()
    with pytest.raises(EntryError, match="not a regular file"):
        FileSource(tmp_path).open(entry)


def test_sources_and_entries_pickle(tmp_path: Path) -> None:
    # the Ray engine ships the source to its actors
    touch(tmp_path / "a.jpg")
    source = open_source(tmp_path)
    assert pickle.loads(pickle.dumps(source)) == source
    assert pickle.loads(pickle.dumps(source.entries())) == source.entries()


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
    source = open_source(tmp_path)
    items = source.entries()
    shards = [select_shard(source, items, index, count) for index in range(count)]
    keys = [item.key for shard in shards for item in shard]
    assert sorted(keys) == [item.key for item in items]  # disjoint and complete
    assert all(shard == sorted(shard) for shard in shards)  # each shard keeps the order
    assert min(len(shard) for shard in shards) > 0


def test_growing_dataset_keeps_shard_assignments() -> None:
    # Round-robin on the sorted list would move images between shards when files are added.
    every = [Entry(f"{i:03d}.jpg", f"{i:03d}.jpg") for i in range(40)]
    items, grown, source = every[::2], every, FileSource(Path("."))
    for index in range(3):
        before = select_shard(source, items, index, 3)
        assert before == [item for item in select_shard(source, grown, index, 3) if item in items]
        assert all(shard_of(item.key, 3) == index for item in before)


def test_a_real_name_spelling_another_names_escapes_keeps_the_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by the hostile pass: ``a\\xe9.jpg`` (a backslash in the name) beside ``a<0xe9>.jpg``
    (latin-1) gave two entries of one key: two current rows, a miscounted summary, a map drawn
    over the other file. The real name keeps the key; the other is left out, with a warning."""
    write_images(tmp_path, 1)
    photo = (tmp_path / "img_000.jpg").read_bytes()
    literal = tmp_path / "a\\xe9.jpg"
    literal.write_bytes(photo)
    with open(os.fsencode(tmp_path) + b"/a\xe9.jpg", "wb") as fh:
        fh.write(photo)
    with caplog.at_level(logging.WARNING, logger="fdpipe.job"):
        entries = FileSource(tmp_path).entries()
    keys = [entry.key for entry in entries]
    assert keys == sorted(set(keys)) and "a\\xe9.jpg" in keys
    chosen = next(entry for entry in entries if entry.key == "a\\xe9.jpg")
    assert chosen.location == str(literal) and "left out of the run" in caplog.text
