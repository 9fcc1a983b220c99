"""WebDataset shards: tar files whose members ``<key>.<ext>`` group into samples.

A shard is scanned once for its member headers (``tarfile`` seeks over the data, so a remote
shard is read in ranged blocks); each sample becomes one entry holding the offset and size of its
image member, read later with one ranged request. The sample's class comes from a ``.cls`` (or
any ``.<name>``) member, or a key of its ``.json`` member.
"""

from __future__ import annotations

import json
import logging
import posixpath
import tarfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

from braceexpand import braceexpand
from fdpipe.images import IMAGE_EXTENSIONS
from fdpipe.job.inputs import (
    MAX_FILE_BYTES,
    ChangeToken,
    Entry,
    EntryError,
    InputMissing,
    Source,
    key_text,
)
from fdpipe.job.sources.store import (
    change_token,
    filesystem,
    open_file,
    read_bytes,
    scheme_of,
    store_failure,
    version_number,
)

log = logging.getLogger("fdpipe.job")
SCANS = 4  # shards scanned at once

# Which image member a sample is explained by when it has several (webdataset's own order).
IMAGE_PREFERENCE = ("jpg", "jpeg", "png", "webp", "ppm", "pgm", "pbm", "bmp", "gif", "tif", "tiff")
IMAGE_SUFFIXES = frozenset(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
MAX_LABEL_BYTES = 1 << 20  # a .cls or .json member read for the target


def expand(pattern: str) -> list[str]:
    """Shell brace expansion as webdataset does it: ``train-{000000..000002}.tar`` -> 3 names."""
    return list(braceexpand(pattern))


def is_shard_pattern(text: str) -> bool:
    """A ``.tar`` file, or a brace pattern naming ``.tar`` files."""
    return all(name.lower().endswith(".tar") for name in expand(text)) and bool(text)


@dataclass(frozen=True)
class Sample:
    """One sample of a shard: its key and where its image member's bytes lie."""

    key: str  # the sample key (member name without its extensions)
    offset: int  # of the image member's data in the shard; -1: no image member
    size: int
    target: str | None  # its class (``target`` member or JSON key), None when not asked
    note: str | None = None  # why it cannot be explained (no image member)


def split_name(name: str) -> tuple[str, str]:
    """``dir/key.seg.png`` -> (``dir/key``, ``seg.png``): a key ends at its basename's first dot."""
    directory, base = posixpath.split(name)
    stem, _, extension = base.partition(".")
    return posixpath.join(directory, stem), extension.lower()


def scan_shard(fh: IO[bytes], target: str | None = None) -> list[Sample]:
    """The samples of one tar shard in member order; ``target`` names the member extension
    (``cls``) or JSON key (``label``) holding each sample's class.

    Raises ``tarfile.TarError`` (or OSError) when the shard is damaged; samples scanned before
    the damage are lost with it, the caller turns the shard into one failed entry.
    """
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    with tarfile.open(fileobj=fh, mode="r:") as archive:
        for member in archive:
            if not member.isfile() or posixpath.basename(member.name).startswith("."):
                continue
            key, extension = split_name(member.name)
            groups.setdefault(key, {})[extension] = member
        return [_sample(archive, key, members, target) for key, members in groups.items()]


def _sample(
    archive: tarfile.TarFile, key: str, members: dict[str, tarfile.TarInfo], target: str | None
) -> Sample:
    image = next((members[e] for e in IMAGE_PREFERENCE if e in members), None)
    image = image or next((m for e, m in members.items() if e in IMAGE_SUFFIXES), None)
    label = None if target is None else _label(archive, members, target)
    if image is None:
        found = ", ".join(f".{e}" for e in sorted(members))
        return Sample(key, -1, 0, label, f"sample has no image member (it has {found})")
    return Sample(key, image.offset_data, image.size, label)


def _label(archive: tarfile.TarFile, members: dict[str, tarfile.TarInfo], target: str) -> str:
    """The sample's class: the ``.<target>`` member's text, else ``target`` of its ``.json``;
    "" when it has neither (its row fails with the reason, as a manifest's empty cell does)."""
    if target in members:
        return _read(archive, members[target]).decode("utf-8", "replace").strip()
    if "json" in members:
        try:
            document = json.loads(_read(archive, members["json"]))
        except ValueError:
            return ""
        value = document.get(target) if isinstance(document, dict) else None
        return "" if value is None else str(value).strip()
    return ""


def _read(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    if member.size > MAX_LABEL_BYTES:
        return b""
    handle = archive.extractfile(member)
    return handle.read() if handle is not None else b""


def shard_names(patterns: Iterable[str]) -> list[str]:
    """Every shard a list of patterns names, once, in the order given."""
    return list(dict.fromkeys(name for pattern in patterns for name in expand(pattern)))


def pattern_root(pattern: str) -> str:
    """The folder (or URL prefix) before the first brace: keys are shard names relative to it."""
    fixed = pattern.split("{", 1)[0]
    return fixed.rsplit("/", 1)[0] if "/" in fixed else ""


@dataclass
class ShardSource(Source):
    """WebDataset shards named by a brace pattern, local or in a store. An entry is a sample,
    keyed ``<shard>/<sample key>``; all samples of a shard go to one fdpipe shard."""

    pattern: str
    target_column: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    tokens: dict[str, ChangeToken] = field(default_factory=dict, repr=False)
    notes: dict[str, str] = field(default_factory=dict, repr=False)  # key -> why not readable

    @property
    def root(self) -> str:
        return pattern_root(self.pattern) or "."

    def entries(self) -> list[Entry]:
        names = shard_names([self.pattern])
        with ThreadPoolExecutor(SCANS, thread_name_prefix="fdpipe-list") as pool:
            scanned = list(pool.map(self._scan, names))
        missing = [name for name, found in zip(names, scanned, strict=True) if found is None]
        if len(missing) == len(names):
            raise InputMissing(f"input {self.pattern}: no shard exists")
        if missing:  # a failed row each: the night's status says so, a rerun retries it
            log.warning("%d of %d shards do not exist (first: %s)", len(missing), len(names),
                        missing[0])  # fmt: skip
        absent = [self._absent(name) for name in missing]
        return sorted([*absent, *(entry for found in scanned for entry in found or [])])

    def _shard(self, url: str) -> str:
        """A shard's key: its name relative to the pattern's folder."""
        return key_text(url[len(self.root) + 1 :] if pattern_root(self.pattern) else url)

    def _absent(self, url: str) -> Entry:
        """The failed entry of a shard the pattern names and the store lacks."""
        shard = self._shard(url)
        self.notes[shard] = "WebDataset shard does not exist (the pattern names it)"
        self.tokens[shard] = ChangeToken(0, version_number("absent"))
        return Entry(shard, f"{url}@-1+0")

    def _scan(self, url: str) -> list[Entry] | None:
        fs, path = filesystem(url, self.options)
        try:
            info = fs.info(path)
        except FileNotFoundError:
            return None
        except Exception as exc:  # no credentials, an endpoint that does not answer
            raise store_failure(url, exc) from None
        version = change_token(info)
        location = url if scheme_of(url) in (None, "file") else fs.unstrip_protocol(path)
        shard = self._shard(url)
        try:
            with open_file(url, self.options) as fh:
                samples = scan_shard(fh, self.target_column)
        except (tarfile.TarError, OSError, EntryError, EOFError) as exc:
            self.notes[shard] = f"unreadable WebDataset shard: {type(exc).__name__}: {exc}"
            self.tokens[shard] = ChangeToken(info.get("size") or 0, version_number(version))
            return [Entry(shard, f"{location}@-1+0")]
        found = []
        for sample in samples:
            entry = Entry(f"{shard}/{key_text(sample.key)}", f"{location}@{sample.offset}+"
                          f"{sample.size}", sample.target)  # fmt: skip
            self.tokens[entry.key] = ChangeToken(
                sample.size, version_number(f"{version}@{sample.offset}")
            )
            if sample.note is not None:
                self.notes[entry.key] = sample.note
            found.append(entry)
        return found

    def shard_key(self, key: str) -> str:
        end = key.find(".tar/")
        return key if end < 0 else key[: end + 4]

    def token(self, entry: Entry) -> ChangeToken | None:
        return self.tokens.get(entry.key)

    def open(self, entry: Entry, max_bytes: int = MAX_FILE_BYTES) -> bytes:
        if entry.key in self.notes:
            raise EntryError(self.notes[entry.key])
        url, _, span = entry.location.rpartition("@")
        offset, size = (int(part) for part in span.split("+"))
        if size > max_bytes:
            raise EntryError(f"file too large: {size} bytes exceeds the limit of {max_bytes}")
        if scheme_of(url) in (None, "file"):
            with open_file(url) as fh:
                fh.seek(offset)
                return fh.read(size)
        fs, path = filesystem(url, self.options)
        try:
            return read_bytes(fs, path, max_bytes, start=offset, length=size)
        except FileNotFoundError:
            raise EntryError(f"shard not found: {url}") from None


__all__ = [
    "Sample",
    "ShardSource",
    "expand",
    "is_shard_pattern",
    "pattern_root",
    "scan_shard",
    "shard_names",
    "split_name",
]
