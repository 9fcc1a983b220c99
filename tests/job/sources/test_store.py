"""fsspec URLs against a real S3 server (SeaweedFS on loopback): schemes, options, listing with
change tokens, bounded reads."""

from __future__ import annotations

import pytest
from fdpipe.bench.object_store import SeaweedFS
from fdpipe.job.sources.store import (
    UsageError,
    change_token,
    filesystem,
    list_objects,
    parse_storage_options,
    read_bytes,
    relative_key,
    scheme_of,
)


@pytest.mark.parametrize(
    ("text", "scheme"),
    [("s3://b/k", "s3"), ("GS://b", "gs"), ("dir/a.jpg", None), ("C:/x", None), ("a://", "a")],
)
def test_scheme_of(text: str, scheme: str | None) -> None:
    assert scheme_of(text) == scheme


@pytest.mark.parametrize("url", ["ftp://host/x", "hf://datasets/x", "memory://x", "zip://a"])
def test_unknown_scheme_is_a_usage_error(url: str) -> None:
    with pytest.raises(UsageError, match="fdpipe cannot read"):
        filesystem(url)


def test_storage_options_parse_json_values_and_nest() -> None:
    options = parse_storage_options(
        ["anon=true", "endpoint_url=http://127.0.0.1:9", "client_kwargs.region_name=eu", "n=3"]
    )
    assert options == {
        "anon": True,
        "endpoint_url": "http://127.0.0.1:9",
        "client_kwargs": {"region_name": "eu"},
        "n": 3,
    }
    for bad in ["novalue", "=x", "a=1 a.b=2"]:
        with pytest.raises(UsageError):
            parse_storage_options(bad.split(" "))


@pytest.mark.parametrize(
    ("info", "token"),
    [
        ({"ETag": '"abc"', "LastModified": 5}, "ETag=abc"),
        ({"generation": 17, "mtime": 3}, "generation=17"),
        ({"mtime": 3.5}, "mtime=3.5"),
        ({}, ""),
    ],
)
def test_change_token(info: dict, token: str) -> None:
    assert change_token(info) == token


def test_list_and_read_on_a_real_store(
    s3_store: SeaweedFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_store.new_bucket()
    store = s3_store.filesystem()
    store.pipe({f"{bucket}/d/a.jpg": b"aaaa", f"{bucket}/d/sub/b.png": b"bb", f"{bucket}/e": b""})
    for name, value in s3_store.environment.items():  # credentials and endpoint the usual way
        monkeypatch.setenv(name, value)
    fs, root = filesystem(f"s3://{bucket}/d/")
    listed = list_objects(fs, root)
    assert [relative_key(root, o.path) for o in listed] == ["a.jpg", "sub/b.png"]
    assert [o.size for o in listed] == [4, 2]
    assert all(o.token.startswith("ETag=") for o in listed)
    store.pipe(f"{bucket}/d/a.jpg", b"AAAA")  # same size, new bytes: the token moves
    assert list_objects(fs, root)[0].token != listed[0].token
    assert read_bytes(fs, listed[0].path, 10) == b"AAAA"
    assert read_bytes(fs, listed[0].path, 10, start=1, length=2) == b"AA"
    with pytest.raises(ValueError, match="too large"):
        read_bytes(fs, listed[0].path, 3)
    assert list_objects(fs, f"{bucket}/nothing-here/") == []
    one = list_objects(fs, f"{bucket}/d/a.jpg")
    assert [relative_key(f"{bucket}/d/a.jpg", o.path) for o in one] == ["a.jpg"]
