"""What a job explains: a sorted, de-duplicated list of image files, optionally one shard of it."""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from fdpipe.images import IMAGE_EXTENSIONS

LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})
PATH_COLUMNS = ("image_path", "path", "file", "filename")
OUTPUT_MARKER = ".fdpipe-output"  # in every directory fdpipe writes; never walked as input


class InputError(ValueError):
    """An input that cannot be listed, with the reason."""


@dataclass(frozen=True, order=True)
class InputItem:
    key: str  # the ``image_path`` column: relative to the input root, or as the list gives it
    path: Path  # where the file is read from
    target: str | None = None  # the class to explain (a manifest's --target-column), as written


@dataclass(frozen=True)
class InputList:
    root: Path  # directory that relative keys resolve against
    items: list[InputItem]


def collect_inputs(source: str | os.PathLike[str], target_column: str | None = None) -> InputList:
    """A directory (walked recursively for image files), a list file, or a CSV/Parquet manifest.

    Items come back sorted by key and without duplicates, so every run sees the same order.
    ``target_column`` names a manifest column holding each image's class to explain.
    """
    source = Path(source)
    if target_column is not None:
        return _with_targets(source, target_column)
    if source.is_dir():
        root = source.resolve()
        found = walk_images(root)
    elif source.is_file():
        root = source.resolve().parent
        found = [(key, root / key) for key in read_manifest(source)]
    else:
        raise InputError(f"input {source} does not exist")
    items = sorted({InputItem(key_text(key), path) for key, path in found})
    return InputList(root, items)


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


def _with_targets(source: Path, column: str) -> InputList:
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
    root = source.resolve().parent
    targets: dict[str, str] = {}
    for path, target in pairs:
        value = "" if target is None else str(target).strip()  # "": no class (a failed row)
        if targets.setdefault(path, value) != value:
            raise InputError(f"manifest {source} lists {path} twice with different targets")
    items = [InputItem(k, root / k, targets[k]) for k in sorted(targets)]
    return InputList(root, items)


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
    "OUTPUT_MARKER",
    "InputError",
    "InputItem",
    "InputList",
    "collect_inputs",
    "key_text",
    "parse_shard",
    "read_manifest",
    "select_shard",
    "shard_of",
    "walk_images",
]
