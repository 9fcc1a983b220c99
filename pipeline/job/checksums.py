"""Checksums of a local results table's data files.

delta-rs writes no Parquet page checksums, so a data file whose footer still reads but whose
pages were altered (bit rot, a bad copy) would decode as wrong values. fdpipe records the sha256
of every data file it commits, right after the commit, in ``_checksums/<file>.sha256``
(``sha256sum`` format: ``cd OUTPUT && cat _checksums/*.sha256 | sha256sum -c``; Delta readers
skip ``_`` folders), and checks it where a whole file is read: at the start of ``explain`` (a
file that fails is set aside and its images are redone, ``ResultsTable.set_aside_damaged``) and
by every reader of maps (named and skipped). A file without a checksum (written before them, or
by a run killed between its commit and the checksum) is decoded whole by the next ``explain``
(set aside and redone where it does not decode) and sealed then; readers check every file's
footer and its maps' range.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import stat
import sys
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote

from fdpipe.job.inputs import EntryError, open_regular

log = logging.getLogger("fdpipe.job")

CHECKSUMS_DIR = "_checksums"
MAX_SIDECAR = 4096  # a line of 64 hex digits and a file name


def sha256_of(path: Path) -> str:
    """EntryError for a FIFO or device (never waited on), OSError where it cannot be read."""
    with open_regular(path, sys.maxsize) as fh:  # a data file has no size bound of its own
        return hashlib.file_digest(fh, "sha256").hexdigest()


def sidecar(root: Path, name: str) -> Path:
    return root / CHECKSUMS_DIR / f"{name}.sha256"


def folder(root: Path, create: bool = False) -> Path | None:
    """The table's checksum folder, or None where there is none, or where something other than
    a folder of its own stands there (a link, a file, a FIFO): never followed, written or
    cleaned, so fdpipe neither writes nor deletes outside the table through it."""
    path = root / CHECKSUMS_DIR
    try:
        if create:
            path.mkdir(exist_ok=True)
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:  # FileExistsError when a non-folder stands there, permissions
        _not_a_folder(str(path), exc.strerror or str(exc))
        return None
    if stat.S_ISDIR(mode):
        return path
    _not_a_folder(str(path), "a link or a file, not a folder")
    return None


@functools.cache
def _not_a_folder(path: str, why: str) -> None:  # once per process
    log.warning("%s: %s: the data files' checksums are neither checked nor recorded", path, why)


def own_data_file(name: str) -> bool:
    """A data file at the table's top level (never a path out of it from a tampered log)."""
    return Path(name).name == name and name.endswith(".parquet") and name[0] not in "._"


def added_files(delta_log: Path, version: int) -> list[str]:
    """The data files that ``version``'s commit (in the folder ``delta_log``) added."""
    try:
        lines = (delta_log / f"{version:020d}.json").read_text().splitlines()
    except OSError:  # cleaned up, or another writer's checkpoint only: nothing to seal
        return []
    names = []
    for line in lines:
        try:
            add = json.loads(line).get("add")
        except (ValueError, AttributeError):
            continue
        if isinstance(add, dict) and isinstance(add.get("path"), str):
            names.append(unquote(add["path"]))
    return [name for name in names if own_data_file(name)]


def seal(root: Path, delta_log: Path, versions: Iterable[int]) -> None:
    """Record the sha256 of each data file the ``versions`` (just committed) added."""
    for version in versions:
        for name in added_files(delta_log, version):
            if not seal_file(root, name):
                return


def seal_file(root: Path, name: str) -> bool:
    """Record ``name``'s sha256 unless one is; False where the checksum folder cannot be used."""
    target = sidecar(root, name)
    if target.exists() or not (root / name).is_file():
        return True
    if folder(root, create=True) is None:
        return False
    try:
        temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        temp.write_text(f"{sha256_of(root / name)}  {name}\n")
        os.replace(temp, target)  # atomically: a reader never sees half a checksum
    except (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        # Something else where the checksums go: the commit stands, unchecked.
        log.warning("%s: no checksum recorded (%s)", root / name, exc)
    return True


def recorded(path: Path) -> bool:
    """Whether a checksum of ``path`` stands in the table's own checksum folder."""
    return folder(path.parent) is not None and os.path.lexists(sidecar(path.parent, path.name))


def mismatch(path: Path) -> str | None:
    """Why ``path`` is not the file fdpipe wrote (its sha256 differs from the recorded one), or
    None when it is, or when no checksum was recorded."""
    if folder(path.parent) is None:
        return None
    record = sidecar(path.parent, path.name)
    try:
        if not stat.S_ISREG(record.lstat().st_mode):  # a FIFO would block, a link lead away
            return f"its checksum {record} is not a regular file"
        with record.open("rb") as fh:
            words = fh.read(MAX_SIDECAR).decode("ascii", "replace").split()
    except OSError:  # none recorded (or none readable: the file is checked as before them)
        return None
    expected = words[0].lower() if words else ""
    try:
        actual = sha256_of(path)
    except (OSError, EntryError) as exc:  # gone, unreadable, a FIFO: not the file fdpipe wrote
        return f"cannot be read ({getattr(exc, 'strerror', None) or exc})"
    if actual == expected:
        return None
    return (
        f"sha256 {actual[:12]}... differs from the {expected[:12]}... recorded when it was written"
    )


def forget(root: Path, names: Iterable[str]) -> None:
    """Drop the checksums of data files that left the folder (vacuumed, set aside)."""
    if folder(root) is None:
        return
    for name in names:
        if own_data_file(name):
            sidecar(root, name).unlink(missing_ok=True)


def orphans(root: Path) -> list[str]:
    """Data files with a checksum but no longer in the folder."""
    found = folder(root)
    if found is None:
        return []
    names = [p.name.removesuffix(".sha256") for p in found.glob("*.sha256")]
    return [name for name in names if not (root / name).exists()]


__all__ = [
    "CHECKSUMS_DIR", "added_files", "forget", "mismatch", "orphans", "recorded", "seal",
    "seal_file", "sidecar",
]  # fmt: skip
