"""What a job explains: a sorted, de-duplicated list of image files, optionally one shard of it."""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
from fdpipe.images import IMAGE_EXTENSIONS

LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})
PATH_COLUMNS = ("image_path", "path", "file", "filename")


class InputError(ValueError):
    """An input that cannot be listed, with the reason."""


@dataclass(frozen=True, order=True)
class InputItem:
    key: str  # the ``image_path`` column: relative to the input root, or as the list gives it
    path: Path  # where the file is read from


@dataclass(frozen=True)
class InputList:
    root: Path  # directory that relative keys resolve against
    items: list[InputItem]


def collect_inputs(source: str | os.PathLike[str]) -> InputList:
    """A directory (walked recursively for image files), a list file, or a CSV/Parquet manifest.

    Items come back sorted by key and without duplicates, so every run sees the same order.
    """
    source = Path(source)
    if source.is_dir():
        root = source.resolve()
        keys = walk_images(root)
    elif source.is_file():
        root = source.resolve().parent
        keys = read_manifest(source)
    else:
        raise InputError(f"input {source} does not exist")
    items = sorted({InputItem(key, root / key) for key in keys})
    return InputList(root, items)


def walk_images(root: Path) -> list[str]:
    keys = []
    for directory, subdirs, files in os.walk(root, followlinks=True):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                keys.append(Path(directory, name).relative_to(root).as_posix())
    return keys


def read_manifest(path: Path) -> list[str]:
    """Paths from a list file (one per line, ``#`` comments) or a CSV / Parquet manifest."""
    suffix = path.suffix.lower()
    if suffix in LIST_SUFFIXES:
        lines = path.read_text(encoding="utf-8").splitlines()
        return [
            line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")
        ]
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            column = path_column(path, reader.fieldnames or [])
            return [row[column] for row in reader if row[column]]
    if suffix in {".parquet", ".pq"}:
        column = path_column(path, pq.read_schema(path).names)
        values = pq.read_table(path, columns=[column]).column(column).to_pylist()
        return [value for value in values if value]
    raise InputError(
        f"input {path}: expected a directory, a list file ({', '.join(sorted(LIST_SUFFIXES))}) "
        f"or a .csv / .parquet manifest"
    )


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


def select_shard(items: list[InputItem], index: int, count: int) -> list[InputItem]:
    if count == 1:
        return items
    return [item for item in items if shard_of(item.key, count) == index]


__all__ = [
    "InputError",
    "InputItem",
    "InputList",
    "collect_inputs",
    "parse_shard",
    "read_manifest",
    "select_shard",
    "shard_of",
    "walk_images",
]
