"""Images as objects in a real S3 server (SeaweedFS on loopback): a prefix, manifests of URLs,
change tokens from the listing."""

from __future__ import annotations

from pathlib import Path

import pytest
from fdpipe.bench.object_store import SeaweedFS
from fdpipe.job.inputs import EntryError, InputError, InputMissing
from fdpipe.job.sources import ObjectSource, UsageError, locate


@pytest.fixture
def bucket(s3_store: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket; credentials and endpoint in the standard AWS variables."""
    for name, value in s3_store.environment.items():
        monkeypatch.setenv(name, value)
    name = s3_store.new_bucket()
    s3_store.filesystem().pipe(
        {
            f"{name}/photos/a.jpg": b"A" * 10,
            f"{name}/photos/sub/b.PNG": b"B" * 20,
            f"{name}/photos/notes.txt": b"not an image",
            f"{name}/photos/.hidden/c.jpg": b"C",
            f"{name}/photos/run/.fdpipe-output": b"",
            f"{name}/photos/run/x.jpg": b"an output's picture",
        }
    )
    return name


def test_prefix_lists_images_with_store_tokens(bucket: str, s3_store: SeaweedFS) -> None:
    source = locate(f"s3://{bucket}/photos/")
    assert isinstance(source, ObjectSource)
    entries = source.entries()
    assert [e.key for e in entries] == ["a.jpg", "sub/b.PNG"]
    assert entries[0].location == f"s3://{bucket}/photos/a.jpg"
    assert [source.open(e) for e in entries] == [b"A" * 10, b"B" * 20]
    before = source.token(entries[0])
    assert before is not None and before.size == 10
    s3_store.filesystem().pipe(f"{bucket}/photos/a.jpg", b"Z" * 10)  # same size, new ETag
    again = locate(f"s3://{bucket}/photos/")
    assert again is not None and again.entries()[0] == entries[0]
    assert again.token(entries[0]) != before
    s3_store.filesystem().rm(f"{bucket}/photos/sub/b.PNG")
    with pytest.raises(EntryError, match="not found"):
        source.open(entries[1])
    with pytest.raises(EntryError, match="too large"):
        source.open(entries[0], max_bytes=4)


def test_missing_and_unknown(bucket: str) -> None:
    with pytest.raises(InputMissing):
        locate(f"s3://{bucket}/nothing/").entries()  # type: ignore[union-attr]
    with pytest.raises(InputMissing):
        locate("s3://no-such-bucket-fdpipe/x/").entries()  # type: ignore[union-attr]
    with pytest.raises(UsageError, match="cannot read ftp://"):
        locate("ftp://host/images/")
    with pytest.raises(InputError, match="--target-column needs"):
        locate(f"s3://{bucket}/photos/", "label").entries()  # type: ignore[union-attr]


def test_remote_manifest_with_targets(bucket: str, s3_store: SeaweedFS) -> None:
    s3_store.filesystem().pipe(
        f"{bucket}/lists/todo.csv",
        f"image_path,label\n../photos/a.jpg,3\ns3://{bucket}/photos/sub/b.PNG,tabby\n".encode(),
    )
    source = locate(f"s3://{bucket}/lists/todo.csv", "label")
    assert isinstance(source, ObjectSource)
    entries = source.entries()
    assert [(e.key, e.target) for e in entries] == [
        ("../photos/a.jpg", "3"),
        (f"s3://{bucket}/photos/sub/b.PNG", "tabby"),
    ]
    assert [source.open(e) for e in entries] == [b"A" * 10, b"B" * 20]
    assert all(source.token(e) is not None for e in entries)


def test_local_list_of_urls(bucket: str, tmp_path: Path) -> None:
    (tmp_path / "local.jpg").write_bytes(b"L" * 3)
    listing = tmp_path / "todo.txt"
    listing.write_text(f"s3://{bucket}/photos/a.jpg\nlocal.jpg\ns3://{bucket}/photos/gone.jpg\n")
    source = locate(str(listing))
    assert isinstance(source, ObjectSource)
    entries = {e.key: e for e in source.entries()}
    assert source.open(entries["local.jpg"]) == b"L" * 3
    assert source.open(entries[f"s3://{bucket}/photos/a.jpg"]) == b"A" * 10
    assert source.token(entries[f"s3://{bucket}/photos/gone.jpg"]) is None
    with pytest.raises(EntryError):
        source.open(entries[f"s3://{bucket}/photos/gone.jpg"])
    plain = tmp_path / "plain.txt"
    plain.write_text("local.jpg\n")
    assert locate(str(plain)) is None  # local paths only: FileSource
