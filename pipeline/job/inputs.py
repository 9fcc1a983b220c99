"""Where a job's images come from: a ``Source`` lists entries and opens one entry's bytes.

A source is the one interface the job reads its input through. It lists ``Entry`` objects, each
with a stable, unique ``key`` (the ``image_path`` column), gives each entry a ``ChangeToken``
(compared on a rerun: an unchanged token means the bytes need not be read again) and opens one
entry's bytes. ``FileSource`` implements it for local files: a directory walk, a list file or a
CSV / Parquet manifest of paths; ``fdpipe.job.sources`` holds the others and ``open_source``, which
picks the source for what ``--input`` names.
Sharding (``select_shard``) works on keys alone, so it holds for every source.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import re
import stat
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq
from fdpipe.errors import FdpipeError
from fdpipe.images import IMAGE_EXTENSIONS

log = logging.getLogger("fdpipe.job")

LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})
PATH_COLUMNS = ("image_path", "path", "file", "filename")
OUTPUT_MARKER = ".fdpipe-output"  # in every directory fdpipe writes; never walked as input
MAX_FILE_BYTES = 1 << 30  # an image file above 1 GiB is refused before it is read


class InputError(FdpipeError, ValueError):
    """An input that cannot be listed, with the reason (a setting error: exit 2)."""


class InputMissing(InputError):
    """The input itself does not exist: nothing to do (exit 3, or 0 with ``--allow-empty``)."""


class EntryError(FdpipeError):
    """One entry cannot be read (not a regular file, too large, gone): its row fails with this
    message; the rest of the run goes on."""


@dataclass(frozen=True, order=True)
class Entry:
    """One image of a source."""

    key: str  # stable across runs and unique in the source: the ``image_path`` column
    location: str  # where the source reads it (a path, a URL, a shard member): the source's own
    target: str | None = None  # the class to explain (a manifest's --target-column), as written


class ChangeToken(NamedTuple):
    """What a source says changes whenever an entry's bytes do, without reading them.

    Stored with each row (``file_size``, ``file_mtime_ns``) and compared on a rerun: an entry
    whose token is unchanged is not read again; one whose token moved is re-hashed, and explained
    again only if its SHA-256 changed. So a token may change without the bytes changing (a touch),
    never the reverse. Files give (size, mtime in ns); a remote store gives the size and whatever
    integer it bumps on every write (a generation, a last-modified time in ns).
    """

    size: int
    version: int


class Source(ABC):
    """The interface every input implements: list entries, give their change tokens, open one.

    A source is small and picklable (the Ray engine ships it to its actors); all methods may be
    called from several threads at once.
    """

    @property
    @abstractmethod
    def root(self) -> str:
        """What relative keys resolve against (recorded as the run's ``input_root``)."""

    @abstractmethod
    def entries(self) -> list[Entry]:
        """Every entry, sorted by key, keys unique, so every run sees the same order.

        Raises ``InputMissing`` when the input itself does not exist, ``InputError`` when it
        cannot be listed; an empty source gives an empty list.
        """

    @abstractmethod
    def token(self, entry: Entry) -> ChangeToken | None:
        """``entry``'s change token now; None when it cannot be had (``open`` will say why)."""

    def shard_key(self, key: str) -> str:
        """What ``--shard`` hashes for ``key``: the key, or the unit the source reads together
        (a WebDataset shard), so that the whole unit goes to one fdpipe shard."""
        return key

    @abstractmethod
    def open(self, entry: Entry, max_bytes: int = MAX_FILE_BYTES) -> bytes:
        """``entry``'s bytes, at most ``max_bytes`` of them.

        Raises ``EntryError`` (or ``OSError``) with the reason when the entry cannot be read:
        that entry becomes a failed row, the run goes on. Never blocks on a FIFO or device.
        """


@dataclass(frozen=True)
class FileSource(Source):
    """Local files: a directory (walked recursively for image files), a list file (one path per
    line, ``#`` comments) or a CSV / Parquet manifest with a path column; relative paths resolve
    against the list's folder. Tokens are (size, mtime_ns) from ``stat``."""

    path: Path
    target_column: str | None = None

    @property
    def root(self) -> str:
        return str(self.path.resolve() if self.path.is_dir() else self.path.resolve().parent)

    def entries(self) -> list[Entry]:
        if not self.path.exists():
            raise InputMissing(f"input {self.path} does not exist")
        root = Path(self.root)
        if self.target_column is not None:
            return _with_targets(self.path, root, self.target_column)
        if self.path.is_dir():
            found = walk_images(root)
        elif self.path.is_file():
            found = [(key, root / key) for key in read_manifest(self.path)]
        else:  # a FIFO or device would block the listing
            raise InputError(f"input {self.path} is not a directory or a regular file")
        return unique_keys(Entry(key_text(key), os.fsdecode(path)) for key, path in found)

    def token(self, entry: Entry) -> ChangeToken | None:
        try:
            status = os.stat(entry.location)
        except OSError:
            return None  # open() reports why
        return ChangeToken(status.st_size, status.st_mtime_ns)

    def open(self, entry: Entry, max_bytes: int = MAX_FILE_BYTES) -> bytes:
        if climbs_out(entry.key):
            raise EntryError(
                "a relative entry that climbs out of the list's folder ('..'): not read; "
                "write the absolute path of a file that lives elsewhere"
            )
        with open_regular(Path(entry.location), max_bytes) as fh:
            return fh.read()


def climbs_out(key: str) -> bool:
    """Whether a relative list or manifest entry leaves the folder it is relative to: an input
    lives under the input directory or the list's folder, or is named by an absolute path."""
    if os.path.isabs(key):
        return False
    normal = os.path.normpath(key)
    return normal == os.pardir or normal.startswith(os.pardir + os.sep)


def open_regular(path: Path, max_bytes: int) -> io.BufferedReader:
    """``path`` opened for reading if it is a regular file of at most ``max_bytes`` bytes.

    FIFOs, devices (a symlink to /dev/zero) and sockets would block or never end: they are refused
    from their ``stat`` before a byte is read, and opened non-blocking in case one replaced the
    file since.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise EntryError("not a regular file (a FIFO, device or socket): not read")
        if status.st_size > max_bytes:
            raise EntryError(
                f"file too large: {status.st_size} bytes exceeds the limit of {max_bytes}"
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def unique_keys(entries: Iterable[Entry]) -> list[Entry]:
    """Sorted by key, one entry a key. A name that is not UTF-8 is keyed with ``\\xNN`` escapes,
    which a real name can spell too (``a\\xe9.jpg``, backslash and all): the real name keeps the
    key (readers find it by that name), the other file is left out of the run with a warning."""
    chosen: dict[str, Entry] = {}
    for entry in sorted(set(entries)):
        held = chosen.setdefault(entry.key, entry)
        if held is not entry:
            keep, drop = (entry, held) if _escaped(held.location) else (held, entry)
            chosen[entry.key] = keep
            # repr: a name's undecodable bytes (surrogates) would break a UTF-8 log stream
            log.warning("%r and %r both have the key %r: the second is left out of the run "
                        "(rename it)", keep.location, drop.location, entry.key)  # fmt: skip
    return [chosen[key] for key in sorted(chosen)]


def _escaped(location: str) -> bool:  # bytes that are not UTF-8, kept by os.fsdecode as surrogates
    return any("\udc80" <= c <= "\udcff" for c in location)


def key_text(name: str) -> str:
    """A path as valid UTF-8 for the ``image_path`` column (Parquet strings must be UTF-8).

    A name that is not UTF-8 (``os.fsdecode`` keeps its bytes as surrogates) is written with each
    such byte as ``\\xNN``, e.g. ``latin1-\\xe9.jpg``; the file itself is read by its real name.
    """
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")
    return name


ESCAPED_BYTE = re.compile(rb"\\x([89a-f][0-9a-f])")  # a byte key_text escaped: 0x80 and up


def key_file(root: Path, key: str) -> Path:
    """The file of an ``image_path`` under ``root``, for the readers (render, report,
    ``evaluate --maps``): ``root / key``, or, where that does not exist and ``key`` holds
    ``\\xNN`` escapes, the file whose name has those bytes (``key_text`` reversed)."""
    path = root / key
    if "\\x" not in key or os.path.lexists(path):
        return path
    raw = ESCAPED_BYTE.sub(lambda m: bytes([int(m[1], 16)]), key.encode("utf-8"))
    real = root / os.fsdecode(raw)  # surrogates: the bytes go back to the OS as they were
    return real if os.path.lexists(real) else path


def walk_images(root: Path) -> list[tuple[str, Path]]:
    """(key, path) of the image files under ``root``; each real directory is walked once.

    Symlinked directories are followed, but a directory reached again (a loop like ``ln -s .
    loop``, or two links to one place) is skipped, and so are hidden entries and fdpipe's own
    output directories (those holding ``OUTPUT_MARKER``, e.g. overlays rendered into the input).
    """
    found = []
    seen: set[tuple[int, int]] = set()
    for directory, subdirs, files in os.walk(root, followlinks=True):
        status = os.stat(directory)
        if (status.st_dev, status.st_ino) in seen or (
            OUTPUT_MARKER in files and Path(directory) != root
        ):
            subdirs[:] = []
            continue
        seen.add((status.st_dev, status.st_ino))
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                path = Path(directory, name)
                found.append((path.relative_to(root).as_posix(), path))
    return found


def read_manifest(path: Path) -> list[str]:
    """Paths from a list file (one per line, ``#`` comments) or a CSV / Parquet manifest."""
    try:
        return _read_manifest(path)
    except InputError:
        raise
    except UnicodeDecodeError as exc:
        raise InputError(
            f"input {path} is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    except (OSError, ValueError, csv.Error, pa.ArrowException) as exc:
        raise InputError(f"input {path} cannot be read as a manifest: {exc}") from None


def _read_manifest(path: Path) -> list[str]:
    suffix = path.suffix.lower()
    if suffix in LIST_SUFFIXES:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
        return [
            line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")
        ]
    if suffix == ".csv":
        # utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            column = path_column(path, list(reader.fieldnames or []))
            return [row[column] for row in reader if row[column]]
    if suffix in {".parquet", ".pq"}:
        schema = pq.read_schema(path)
        column = path_column(path, list(schema.names))
        if not pa.types.is_string(schema.field(column).type) and not pa.types.is_large_string(
            schema.field(column).type
        ):
            raise InputError(
                f"manifest {path}: column {column!r} holds {schema.field(column).type}, "
                "not strings (paths)"
            )
        values = pq.read_table(path, columns=[column]).column(column).to_pylist()
        return [value for value in values if value]
    raise InputError(
        f"input {path}: expected a directory, a list file ({', '.join(sorted(LIST_SUFFIXES))}) "
        f"or a .csv / .parquet manifest"
    )


def _with_targets(source: Path, root: Path, column: str) -> list[Entry]:
    targets = manifest_targets(source, column)
    return [Entry(k, os.fsdecode(root / k), targets[k]) for k in sorted(targets)]


def manifest_targets(source: Path, column: str) -> dict[str, str]:
    """Path -> its class from a CSV or Parquet manifest's ``column`` ("" where empty)."""
    suffix = source.suffix.lower()
    if not source.is_file() or suffix not in {".csv", ".parquet", ".pq"}:
        raise InputError(f"--target-column needs a CSV or Parquet manifest, not {source}")
    if suffix == ".csv":
        with source.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            names = list(reader.fieldnames or [])
            key = path_column(source, names)
            if column not in names:
                raise InputError(f"manifest {source} has no column {column!r}: {', '.join(names)}")
            pairs = [(row[key], row[column]) for row in reader if row[key]]
    else:
        names = pq.read_schema(source).names
        key = path_column(source, names)
        if column not in names:
            raise InputError(f"manifest {source} has no column {column!r}: {', '.join(names)}")
        table = pq.read_table(source, columns=[key, column]).to_pydict()
        pairs = [(p, t) for p, t in zip(table[key], table[column], strict=True) if p]
    targets: dict[str, str] = {}
    for path, target in pairs:
        value = "" if target is None else str(target).strip()  # "": no class (a failed row)
        if targets.setdefault(path, value) != value:
            raise InputError(f"manifest {source} lists {path} twice with different targets")
    return targets


def path_column(path: Path, names: list[str]) -> str:
    for name in PATH_COLUMNS:
        if name in names:
            return name
    raise InputError(f"manifest {path} has no path column; name one of: {', '.join(PATH_COLUMNS)}")


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise InputError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if not 0 <= index < count:
        raise InputError(f"--shard {text}: need 0 <= i < n")
    return index, count


def shard_of(key: str, count: int) -> int:
    """Stable across runs and machines, and unaffected by other files joining the dataset."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def select_shard(source: Source, entries: list[Entry], index: int, count: int) -> list[Entry]:
    """The entries of shard ``index`` of ``count``, by the source's shard key of each."""
    if count == 1:
        return entries
    return [entry for entry in entries if shard_of(source.shard_key(entry.key), count) == index]


__all__ = [
    "MAX_FILE_BYTES",
    "OUTPUT_MARKER",
    "ChangeToken",
    "Entry",
    "EntryError",
    "FileSource",
    "InputError",
    "InputMissing",
    "Source",
    "key_file",
    "key_text",
    "manifest_targets",
    "open_regular",
    "parse_shard",
    "read_manifest",
    "select_shard",
    "shard_of",
    "walk_images",
]
