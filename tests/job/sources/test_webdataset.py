"""WebDataset shards: brace patterns, sample grouping, targets from .cls/.json, damaged shards,
entries read locally and from a real S3 server."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from fdpipe.bench.datasets import write_shards
from fdpipe.bench.object_store import SeaweedFS
from fdpipe.job.inputs import EntryError, InputMissing
from fdpipe.job.sources import ShardSource, locate
from fdpipe.job.sources.webdataset import expand, is_shard_pattern, scan_shard, split_name

FILES = [(f"img_{i}.jpg", bytes([i]) * (10 + i)) for i in range(5)]


@pytest.mark.parametrize(
    ("pattern", "names"),
    [
        ("s/t-{0..2}.tar", ["s/t-0.tar", "s/t-1.tar", "s/t-2.tar"]),
        ("t-{000008..000010}.tar", ["t-000008.tar", "t-000009.tar", "t-000010.tar"]),
        ("{a,b}/x.tar", ["a/x.tar", "b/x.tar"]),
        ("plain.tar", ["plain.tar"]),
    ],
)
def test_expand_like_webdataset(pattern: str, names: list[str]) -> None:
    assert expand(pattern) == names
    assert is_shard_pattern(pattern)


@pytest.mark.parametrize(
    ("name", "split"),
    [("a/b.c.jpg", ("a/b", "c.jpg")), ("x.JPG", ("x", "jpg")), ("dir.d/k.cls", ("dir.d/k", "cls"))],
)
def test_split_name(name: str, split: tuple[str, str]) -> None:
    assert split_name(name) == split


def tar_of(members: dict[str, bytes]) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


def test_scan_groups_samples_and_reads_targets() -> None:
    shard = tar_of(
        {
            "a.jpg": b"A" * 7,
            "a.cls": b" 3\n",
            "b.png": b"B" * 5,
            "b.json": b'{"label": "tabby"}',
            "c.txt": b"no image",
            "d.seg.png": b"D",
            "d.jpg": b"DD",  # the .jpg is preferred over another image member
            ".hidden.jpg": b"x",
        }
    )
    samples = {s.key: s for s in scan_shard(shard, target="cls")}
    assert sorted(samples) == ["a", "b", "c", "d"]
    assert (samples["a"].size, samples["a"].target) == (7, "3")
    assert samples["b"].target == ""  # no .cls member; its .json has no "cls" key
    assert samples["c"].offset == -1 and "no image member (it has .txt)" in str(samples["c"].note)
    assert samples["d"].size == 2
    shard.seek(samples["a"].offset)
    assert shard.read(7) == b"A" * 7
    shard.seek(0)
    by_json = {s.key: s.target for s in scan_shard(shard, target="label")}
    assert by_json["b"] == "tabby" and by_json["a"] == ""


def test_local_shards_as_a_source(tmp_path: Path) -> None:
    write_shards(FILES, tmp_path / "shards", per_shard=2, labels=[0, 1, 2, 3, 4])
    (tmp_path / "shards" / "train-000002.tar").write_bytes(b"not a tar file at all" * 40)
    pattern = str(tmp_path / "shards" / "train-{000000..000002}.tar")  # 000002 does not exist
    source = locate(pattern, target_column="cls")
    assert isinstance(source, ShardSource)
    entries = source.entries()
    assert [e.key for e in entries] == [
        "train-000000.tar/img_0",
        "train-000000.tar/img_1",
        "train-000001.tar/img_2",
        "train-000001.tar/img_3",
        "train-000002.tar",  # the damaged shard: one entry, its row fails
    ]
    assert [e.target for e in entries[:4]] == ["0", "1", "2", "3"]
    assert [source.open(e) for e in entries[:4]] == [data for _, data in FILES[:4]]
    with pytest.raises(EntryError, match="unreadable WebDataset shard"):
        source.open(entries[4])
    with pytest.raises(EntryError, match="too large"):
        source.open(entries[3], max_bytes=5)
    assert {source.shard_key(e.key) for e in entries} == {
        "train-000000.tar",
        "train-000001.tar",
        "train-000002.tar",
    }
    tokens = [source.token(e) for e in entries[:4]]
    assert len(set(tokens)) == 4 and all(t is not None and t.size > 0 for t in tokens)


def test_a_missing_shard_of_the_pattern_is_a_failed_row(tmp_path: Path) -> None:
    write_shards(FILES, tmp_path / "shards", per_shard=3)
    pattern = str(tmp_path / "shards" / "train-{000000..000002}.tar")  # 000002 does not exist
    source = locate(pattern)
    assert isinstance(source, ShardSource)
    entries = source.entries()
    absent = [e for e in entries if e.key == "train-000002.tar"]
    assert len(absent) == 1 and len(entries) == len(FILES) + 1
    with pytest.raises(EntryError, match="does not exist"):
        source.open(absent[0])


def test_no_shard_at_all_is_missing(tmp_path: Path) -> None:
    with pytest.raises(InputMissing):
        locate(str(tmp_path / "x-{0..3}.tar")).entries()  # type: ignore[union-attr]


def test_fifo_shard_is_not_read(tmp_path: Path) -> None:
    import os

    os.mkfifo(tmp_path / "fifo.tar")
    entries = locate(str(tmp_path / "fifo.tar")).entries()  # type: ignore[union-attr]
    assert [e.key for e in entries] == ["fifo.tar"]


def test_remote_shards(s3_store: SeaweedFS, tmp_path: Path) -> None:
    shards = write_shards(FILES, tmp_path / "shards", per_shard=3)
    bucket = s3_store.new_bucket()
    store = s3_store.filesystem()
    for shard in shards:
        store.put_file(str(shard), f"{bucket}/wds/{shard.name}")
    source = locate(f"s3://{bucket}/wds/train-{{000000..000001}}.tar", None,
                    s3_store.storage_options)  # fmt: skip
    assert isinstance(source, ShardSource)
    entries = source.entries()
    assert [e.key.split("/")[0] for e in entries] == ["train-000000.tar"] * 3 + [
        "train-000001.tar"
    ] * 2
    assert [source.open(e) for e in entries] == [data for _, data in FILES]
