"""Images as objects: every image under a store prefix (``s3://bucket/photos/``), or the URLs a
list / CSV / Parquet manifest names (the manifest itself local or in a store).

Listing takes each object's size and version from the store's listing (no read, no HEAD); an
entry's bytes are one ranged GET. Local files a manifest names are read as ``FileSource`` reads
them (regular files only).
"""

from __future__ import annotations

import posixpath
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from fdpipe.images import IMAGE_EXTENSIONS
from fdpipe.job.inputs import (
    MAX_FILE_BYTES,
    OUTPUT_MARKER,
    ChangeToken,
    Entry,
    EntryError,
    InputError,
    InputMissing,
    Source,
    key_text,
    manifest_targets,
    open_regular,
    read_manifest,
)
from fdpipe.job.sources.store import (
    change_token,
    filesystem,
    list_objects,
    read_bytes,
    relative_key,
    scheme_of,
    version_number,
)

MANIFEST_SUFFIXES = frozenset({".txt", ".lst", ".list", ".csv", ".parquet", ".pq"})
MAX_MANIFEST_BYTES = 1 << 30
LOOKUPS = 16  # concurrent metadata requests for a manifest's objects


@dataclass
class ObjectSource(Source):
    """``url``: a store prefix or object, or a manifest (local or remote) naming URLs; ``options``
    go to the filesystem of the input's scheme (``--storage-option``)."""

    url: str
    target_column: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    tokens: dict[str, ChangeToken] = field(default_factory=dict, repr=False)  # from the listing

    @property
    def root(self) -> str:
        return self.url

    def entries(self) -> list[Entry]:
        fs, path = filesystem(self.url, self.options)
        manifest = PurePosixPath(path).suffix.lower() in MANIFEST_SUFFIXES
        if manifest and fs.isfile(path):
            return self._manifest_entries(fs.unstrip_protocol(path))
        if self.target_column is not None:
            raise InputError(
                f"--target-column needs a CSV or Parquet manifest, WebDataset shards or a "
                f"Parquet image table, not {self.url}"
            )
        objects = list_objects(fs, path)
        if not objects and not fs.exists(path):
            raise InputMissing(f"input {self.url} does not exist")
        keys = {relative_key(path, o.path): o for o in objects}
        outputs = [posixpath.dirname(k) for k in keys if posixpath.basename(k) == OUTPUT_MARKER]
        found = []
        for key, stored in keys.items():
            parts = key.split("/")
            if any(p.startswith(".") for p in parts) or not is_image_name(key):
                continue
            if any(key.startswith(f"{d}/") for d in outputs if d):  # fdpipe's own outputs
                continue
            found.append(Entry(key_text(key), fs.unstrip_protocol(stored.path)))
            size = stored.size if stored.size is not None else -1
            self.tokens[found[-1].key] = ChangeToken(size, version_number(stored.token))
        return sorted(found)

    def _manifest_entries(self, manifest: str) -> list[Entry]:
        data = self._read(manifest, MAX_MANIFEST_BYTES)
        suffix = PurePosixPath(manifest).suffix.lower()
        with tempfile.TemporaryDirectory() as folder:
            local = Path(folder, f"manifest{suffix}")
            local.write_bytes(data)
            if self.target_column is None:
                targets: dict[str, str | None] = dict.fromkeys(read_manifest(local))
            else:
                targets = dict(manifest_targets(local, self.target_column))
        parent = manifest.rsplit("/", 1)[0]
        entries = sorted(
            Entry(key_text(key), key if scheme_of(key) else join_url(parent, key), target)
            for key, target in targets.items()
        )
        with ThreadPoolExecutor(LOOKUPS, thread_name_prefix="fdpipe-list") as pool:
            for entry, token in zip(entries, pool.map(self._lookup, entries), strict=True):
                if token is not None:
                    self.tokens[entry.key] = token
        return entries

    def _lookup(self, entry: Entry) -> ChangeToken | None:
        try:
            fs, path = filesystem(entry.location, self._options_for(entry.location))
            info = fs.info(path)
        except (OSError, InputError):
            return None  # open() says why
        size = info.get("size")
        return ChangeToken(-1 if size is None else size, version_number(change_token(info)))

    def _options_for(self, url: str) -> dict[str, Any]:
        """The storage options apply to URLs of the input's own scheme only."""
        return self.options if scheme_of(url) == scheme_of(self.url) else {}

    def token(self, entry: Entry) -> ChangeToken | None:
        return self.tokens.get(entry.key)

    def open(self, entry: Entry, max_bytes: int = MAX_FILE_BYTES) -> bytes:
        known = self.tokens.get(entry.key)
        if known is not None and known.size > max_bytes:
            raise EntryError(f"file too large: {known.size} bytes exceeds the limit of {max_bytes}")
        return self._read(entry.location, max_bytes)

    def _read(self, url: str, max_bytes: int) -> bytes:
        if scheme_of(url) in (None, "file"):  # a local file: regular files only (no FIFO hang)
            local = url.removeprefix("file://")
            with open_regular(Path(local), max_bytes) as fh:
                return fh.read()
        fs, path = filesystem(url, self._options_for(url))
        try:
            return read_bytes(fs, path, max_bytes)
        except FileNotFoundError:
            raise EntryError(f"object not found: {url}") from None
        except ValueError as exc:
            raise EntryError(str(exc)) from None


def join_url(parent: str, relative: str) -> str:
    """``s3://b/lists`` + ``../photos/a.jpg`` -> ``s3://b/photos/a.jpg`` (stores have no ``..``)."""
    scheme, _, rest = parent.partition("://")
    return f"{scheme}://{posixpath.normpath(posixpath.join(rest, relative))}"


def is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS


__all__ = ["ObjectSource", "is_image_name"]
