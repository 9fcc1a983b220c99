"""Inputs beyond local files: object stores and URLs (``objects``), WebDataset shards
(``webdataset``), Parquet image tables (``image_table``), all through fsspec (``store``).

``open_source`` picks the source for an ``--input``: one of these where ``locate`` finds one, else
``fdpipe.job.inputs.FileSource`` (plain local directories, list files and manifests of paths).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fdpipe.job.inputs import FileSource, InputError, Source, read_manifest
from fdpipe.job.sources.image_table import TableSource, is_image_table
from fdpipe.job.sources.objects import MANIFEST_SUFFIXES, ObjectSource
from fdpipe.job.sources.store import SCHEMES, UsageError, filesystem, scheme_of
from fdpipe.job.sources.webdataset import ShardSource, expand

TABLE_SUFFIXES = (".parquet", ".pq")


def open_source(
    spec: str | os.PathLike[str],
    target_column: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Source:
    """The source for ``--input``: a local directory, list file or CSV/Parquet manifest of paths
    (``FileSource``); an object-store prefix or a manifest of URLs, WebDataset shards or a
    Parquet image table. A URL scheme fdpipe cannot read is an ``InputError`` (exit 2), not a
    missing input.

    ``target_column`` names the column (or WebDataset member) holding each image's class to
    explain; ``storage_options`` go to the input's fsspec filesystem.
    """
    text = os.fspath(spec)
    located = locate(text, target_column, storage_options)
    return located or FileSource(Path(text.removeprefix("file://")), target_column)


def locate(
    spec: str, target_column: str | None = None, options: dict[str, Any] | None = None
) -> Source | None:
    """The source for ``spec``, or None for local files that ``FileSource`` reads.

    A URL of a scheme fdpipe does not read is a ``UsageError`` (exit 2), never "missing".
    """
    options = options or {}
    scheme = scheme_of(spec)
    if scheme is not None and scheme not in SCHEMES:
        filesystem(spec)  # raises the usage error naming the schemes fdpipe reads
    names = expand(spec) if "{" in spec else [spec]
    lowered = [name.lower().rstrip("/") for name in names]
    if all(name.endswith(".tar") for name in lowered):
        return ShardSource(spec, target_column, options)
    if all(name.endswith(TABLE_SUFFIXES) for name in lowered) and is_image_table(names[0], options):
        return TableSource(spec, target_column, options)
    if len(names) > 1:
        raise UsageError(
            f"input {spec}: a brace pattern must name .tar shards or Parquet image tables"
        )
    if scheme not in (None, "file"):
        return ObjectSource(spec, target_column, options)
    local = Path(spec.removeprefix("file://"))
    if local.suffix.lower() in MANIFEST_SUFFIXES and local.is_file() and names_urls(local):
        return ObjectSource(str(local.resolve()), target_column, options)
    return None


def names_urls(manifest: Path) -> bool:
    """A local manifest that names URLs (it is read through fsspec, not as local paths)."""
    try:
        return any(scheme_of(name) not in (None, "file") for name in read_manifest(manifest))
    except InputError:
        return False  # FileSource reports it


__all__ = [
    "ObjectSource",
    "ShardSource",
    "TableSource",
    "UsageError",
    "locate",
    "open_source",
]
