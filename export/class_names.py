"""Class names: ImageNet's for 1000-class models, read from a file, or looked up by name."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torchvision
from fdpipe.export.request import ModelError

log = logging.getLogger("fdpipe.models")


def _imagenet_categories() -> list[str]:
    return list(torchvision.models.VGG16_Weights.IMAGENET1K_V1.meta["categories"])


def default_class_names(count: int) -> list[str]:
    return _imagenet_categories() if count == 1000 else [f"class_{i}" for i in range(count)]


def read_class_names(path: str | os.PathLike[str], count: int | None = None) -> list[str]:
    """Class names from a text file (one per line) or JSON (a list, or a dict index -> name)."""
    path = Path(path)
    if not path.is_file():  # a FIFO or a directory would hang or fail later
        raise ModelError(f"class names file {path} is not a regular file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read class names from {path}: {exc}") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelError(f"class names file {path} is not valid JSON: {exc}") from None
        if isinstance(data, dict):
            try:
                by_index = {int(k): str(v) for k, v in data.items()}
            except ValueError:
                raise ModelError(f"class names file {path}: keys must be class indices") from None
            if sorted(by_index) != list(range(len(by_index))):
                raise ModelError(f"class names file {path}: indices must be 0..{len(by_index) - 1}")
            names = [by_index[i] for i in range(len(by_index))]
        elif isinstance(data, list) and all(isinstance(v, str) for v in data):
            names = list(data)
        else:
            raise ModelError(f"class names file {path}: expected a JSON list of names or a dict")
    else:
        names = [line.strip() for line in text.splitlines()]
        while names and not names[-1]:
            names.pop()
    warn_duplicates(path, names)
    if count is not None and len(names) != count:
        raise ModelError(
            f"class names file {path} has {len(names)} names; the model has {count} classes"
        )
    return names


def warn_duplicates(path: Path, names: list[str]) -> None:
    """Names that cannot select their class (``--classes``): repeated or empty ones."""
    where: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        where.setdefault(name, []).append(i)
    for name, indices in where.items():
        if not name:
            log.warning(
                "class names file %s: class %s has no name", path, ", ".join(map(str, indices))
            )
        elif len(indices) > 1:
            log.warning(
                "class names file %s: %r names classes %s (select them by index)",
                path, name, ", ".join(map(str, indices)),
            )  # fmt: skip


def class_indices(tokens: Sequence[int | str], class_names: Sequence[str]) -> list[int]:
    """Class indices from indices or names (``tabby`` or ``281``); unknown ones are errors."""
    exact: dict[str, list[int]] = {}
    folded: dict[str, list[int]] = {}
    for i, name in enumerate(class_names):
        exact.setdefault(name, []).append(i)
        folded.setdefault(name.casefold(), []).append(i)
    indices = []
    for token in tokens:
        text = str(token).strip()
        if number := re.fullmatch(r"(-?\d+)(?:\.0+)?", text):  # "967.0": pandas' int column
            index = int(number[1])  # with gaps, written as floats
            if not 0 <= index < len(class_names):
                raise ModelError(
                    f"class index {index} out of range: valid are 0..{len(class_names) - 1}"
                )
        else:
            found = exact.get(text) or folded.get(text.casefold(), [])
            if not found:
                raise ModelError(f"unknown class {text!r}: not an index nor one of the class names")
            if len(found) > 1:
                raise ModelError(
                    f"class name {text!r} is ambiguous: classes {', '.join(map(str, found))} "
                    "bear it; give the index"
                )
            index = found[0]
        indices.append(index)
    return indices


__all__ = ["class_indices", "default_class_names", "read_class_names"]
