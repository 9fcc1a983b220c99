"""What a Ray actor needs from the driver's disk, shipped with the job: the weights file, the
class names, a ``file.py:factory`` or TorchScript model, an artifacts directory.

``pack`` reads those files into bytes (the driver puts them in Ray's object store once) and
points the config at placeholder paths; ``unpack`` writes them into a folder of the actor's node
and points the config there. So no node needs the driver's paths.
"""

from __future__ import annotations

import os
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from fdpipe.job.config import JobConfig

PLACEHOLDER = Path("/fdpipe-shipped")  # never a real path: every use is rewritten by ``unpack``
SHIPPED_FIELDS = ("model", "artifacts")  # what the actor's model is built from (its request:
# weights, class names, a model file)
MODEL_SOURCES = ("model", "source")  # text fields that may name a model file


def pack(config: JobConfig) -> tuple[JobConfig, dict[str, bytes]]:
    """``config`` with its model files replaced by placeholders, and those files' bytes."""
    files: dict[str, bytes] = {}
    changes = {name: _pack(getattr(config, name), files, name) for name in SHIPPED_FIELDS}
    return replace(config, **changes), files


def unpack(config: JobConfig, files: dict[str, bytes], directory: Path) -> JobConfig:
    """``config`` with its placeholders pointing at ``files`` written under ``directory``."""
    for name, data in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return replace(config, **{n: _rebase(getattr(config, n), directory) for n in SHIPPED_FIELDS})


def _pack(value: Any, files: dict[str, bytes], name: str) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: _pack(getattr(value, f.name), files, f.name) for f in fields(value)}
        return replace(value, **changes)
    if isinstance(value, Path):
        return _ship(value, files) or value
    if isinstance(value, str) and name in MODEL_SOURCES:  # "path/to/file.py:factory", "m.ts"
        head, colon, factory = value.rpartition(":")
        if colon and head.endswith(".py") and (shipped := _ship(Path(head), files)):
            return f"{shipped}:{factory}"
        shipped = _ship(Path(value), files) if not colon else None
        return value if shipped is None else str(shipped)
    return value


def _ship(path: Path, files: dict[str, bytes]) -> Path | None:
    """The placeholder for a file or directory the driver has, with its bytes added."""
    if not (path.is_file() or path.is_dir()):
        return None
    slot = f"{len(files)}-{path.name}"
    members = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for member in members:
        relative = member.relative_to(path).as_posix() if path.is_dir() else ""
        files[f"{slot}/{relative}".rstrip("/")] = member.read_bytes()
    if path.is_dir() and not members:
        files[f"{slot}/.empty"] = b""
    return PLACEHOLDER / slot


def _rebase(value: Any, directory: Path) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return replace(value, **{f.name: _rebase(getattr(value, f.name), directory)
                                 for f in fields(value)})  # fmt: skip
    if isinstance(value, Path | str) and os.fspath(value).startswith(f"{PLACEHOLDER}/"):
        moved = directory / os.fspath(value).removeprefix(f"{PLACEHOLDER}/")
        return moved if isinstance(value, Path) else str(moved)
    return value


__all__ = ["PLACEHOLDER", "pack", "unpack"]
