"""Object stores and URLs through fsspec: which schemes fdpipe reads, the filesystem for one,
listing a prefix with each object's change token, and reading an object's bytes, bounded.

Credentials come the way each filesystem package finds them (environment, profiles, instance
metadata); a private S3-compatible endpoint through ``AWS_ENDPOINT_URL`` or
``--storage-option endpoint_url=...``.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import fsspec
from fdpipe.job.inputs import InputError, open_regular
from fdpipe.job.urls import is_remote, scheme_of, store_message, table_only
from fsspec.spec import AbstractFileSystem

# scheme -> the extra that installs its filesystem package (None: fsspec alone)
SCHEMES: dict[str, str | None] = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gcs",
    "gcs": "gcs",
    "az": "azure",
    "abfs": "azure",
    "abfss": "azure",
    "http": "http",
    "https": "http",
    "file": None,
}
# Where each store keeps a version of an object's bytes, best first (GCS: generation; S3, Azure,
# HTTP: ETag); the modification time when none is given.
VERSION_FIELDS = ("generation", "ETag", "etag", "version_id", "VersionId")
TIME_FIELDS = ("LastModified", "last_modified", "mtime", "updated", "Last-Modified")


class UsageError(InputError):
    """An input the command line cannot name at all (exit 2, not "input missing")."""


def parse_storage_options(pairs: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``key=value`` pairs; a value that reads as JSON (``true``, ``3``, ``{...}``) is that value,
    anything else the string. A dotted key nests (``client_kwargs.region_name=eu-west-1``)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--storage-option must look like key=value, got {pair!r}")
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        *parents, leaf = key.strip().split(".")
        node = options
        for parent in parents:
            node = node.setdefault(parent, {})
            if not isinstance(node, dict):
                raise UsageError(f"--storage-option {pair!r}: {parent} is already a value")
        node[leaf] = value
    return options


def filesystem(url: str, options: dict[str, Any] | None = None) -> tuple[AbstractFileSystem, str]:
    """The filesystem for ``url`` and the path within it; a usage error naming the fix for a
    scheme fdpipe does not read or whose package is missing."""
    scheme = scheme_of(url)
    if scheme is None:
        scheme = "file"
    if scheme not in SCHEMES:
        known = ", ".join(f"{s}://" for s in SCHEMES)
        raise UsageError(f"{url}: fdpipe cannot read {scheme}:// URLs (it reads {known})")
    options = {k: v for k, v in (options or {}).items() if not table_only(k)}
    if scheme in {"s3", "s3a"}:  # a store that does not answer: an error in seconds, not 10 s
        tuning = options["config_kwargs"] = dict(options.get("config_kwargs") or {})
        tuning.setdefault("connect_timeout", 5)
        tuning.setdefault("retries", {"max_attempts": 2, "mode": "standard"})
    if scheme in {"s3", "s3a"} and "endpoint_url" not in options:
        # botocore reads AWS_ENDPOINT_URL too; passed explicitly so older clients honour it
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["endpoint_url"] = endpoint
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
    except ImportError as exc:
        extra = SCHEMES[scheme]
        raise UsageError(
            f"{url}: reading {scheme}:// needs pip install 'fdpipe[{extra}]' ({exc})"
        ) from None
    except (TypeError, ValueError) as exc:  # an option the filesystem does not take
        raise UsageError(f"{url}: {exc}") from None
    return fs, path


def change_token(info: dict[str, Any]) -> str:
    """What the store says about an object's version: its ETag or generation, else its
    modification time (``stat`` for local files). Equal tokens: the bytes did not change."""
    for name in VERSION_FIELDS:
        if info.get(name):
            return f"{name}={str(info[name]).strip(chr(34))}"
    for name in TIME_FIELDS:
        if info.get(name) is not None:
            return f"{name}={info[name]}"
    return ""


def store_failure(url: str, exc: Exception) -> InputError:
    """A store client's error that is no OSError (botocore's missing credentials or unreachable
    endpoint, aiohttp's): one line naming the URL, exit 2, never a traceback."""
    return InputError(f"cannot read {url}: {store_message(exc)}")


def open_file(url: str, options: dict[str, Any] | None = None) -> IO[bytes]:
    """A file to seek in (a tar shard, a Parquet table): local ones only if regular (a FIFO would
    hang the listing), remote ones read in ranged blocks as the reader seeks."""
    if scheme_of(url) in (None, "file"):
        return open_regular(Path(url.removeprefix("file://")), 1 << 62)
    fs, path = filesystem(url, options)
    try:
        return fs.open(path, "rb")
    except OSError:
        raise
    except Exception as exc:
        raise store_failure(url, exc) from None


def version_number(token: str) -> int:
    """A change token as the int64 the rows store (``file_mtime_ns``): 63 bits of its hash,
    compared for equality only."""
    return int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "big") >> 1


@dataclass(frozen=True)
class StoredObject:
    """One object of a listing: its path in the filesystem, size and change token."""

    path: str
    size: int | None
    token: str


def list_objects(fs: AbstractFileSystem, root: str) -> list[StoredObject]:
    """Every object under ``root`` (a prefix is walked recursively; one object is itself), in
    path order. The store's paginated listing gives size and version without a read."""
    try:
        if fs.isfile(root):
            found = {root: fs.info(root)}
        else:
            found = fs.find(root, detail=True, withdirs=False)
    except FileNotFoundError:
        return []
    except Exception as exc:  # permission, network, an unknown bucket, no credentials
        raise InputError(f"cannot list {fs.unstrip_protocol(root)}: {store_message(exc)}"
                         ) from None  # fmt: skip
    return [
        StoredObject(path, info.get("size"), change_token(info))
        for path, info in sorted(found.items())
        if info.get("type", "file") == "file"
    ]


def relative_key(root: str, path: str) -> str:
    """``path`` below the listed prefix, as the ``image_path`` column holds it."""
    return posixpath.relpath(path, root.rstrip("/")) if path != root else posixpath.basename(path)


def read_bytes(
    fs: AbstractFileSystem, path: str, max_bytes: int, start: int = 0, length: int | None = None
) -> bytes:
    """An object's bytes (or ``length`` of them from ``start``) in one ranged request; more
    than ``max_bytes`` is refused (a whole object is cut off there, never read to its end)."""
    if length is not None and length > max_bytes:
        raise ValueError(f"file too large: {length} bytes exceeds the limit of {max_bytes}")
    end = start + (max_bytes + 1 if length is None else length)
    data = fs.cat_file(path, start=start, end=end)
    if len(data) > max_bytes:
        raise ValueError(f"file too large: over the limit of {max_bytes} bytes")
    return bytes(data)


__all__ = [
    "SCHEMES",
    "StoredObject",
    "UsageError",
    "change_token",
    "filesystem",
    "is_remote",
    "list_objects",
    "open_file",
    "parse_storage_options",
    "read_bytes",
    "relative_key",
    "scheme_of",
    "store_failure",
    "version_number",
]
