"""One set of image files laid out as each source reads it: WebDataset shards and a Parquet image
table, for the "sources" bench and the source tests (identical bytes, so identical maps)."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def image_files(directory: Path) -> list[tuple[str, bytes]]:
    """(relative path, bytes) of every file under ``directory``, sorted."""
    return [
        (path.relative_to(directory).as_posix(), path.read_bytes())
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    ]


def write_shards(
    files: Sequence[tuple[str, bytes]],
    directory: Path,
    per_shard: int,
    labels: Sequence[int] | None = None,
) -> list[Path]:
    """``train-000000.tar``, ...: sample ``<stem>`` holds ``.jpg`` (any image suffix) and, with
    ``labels``, ``.cls`` (the class index) and ``.json`` (``{"label": index}``)."""
    directory.mkdir(parents=True, exist_ok=True)
    shards = []
    for start in range(0, len(files), per_shard):
        path = directory / f"train-{start // per_shard:06d}.tar"
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as archive:
            for i in range(start, min(start + per_shard, len(files))):
                name, data = files[i]
                stem, _, suffix = name.replace("/", "_").rpartition(".")
                members = {suffix.lower(): data}
                if labels is not None:
                    members["cls"] = str(labels[i]).encode()
                    members["json"] = json.dumps({"label": labels[i]}).encode()
                for extension, payload in members.items():
                    info = tarfile.TarInfo(f"{stem}.{extension}")
                    info.size, info.mtime = len(payload), 0
                    archive.addfile(info, io.BytesIO(payload))
        shards.append(path)
    return shards


def image_table(
    files: Sequence[tuple[str, bytes]], labels: Sequence[int] | None = None, *, struct: bool = True
) -> pa.Table:
    """Hugging Face's layout: ``image`` as ``{bytes, path}`` (or plain bytes with an
    ``image_path`` id column), ``label``."""
    names = [name for name, _ in files]
    data = [payload for _, payload in files]
    columns: dict[str, pa.Array] = {}
    if struct:
        columns["image"] = pa.StructArray.from_arrays(
            [pa.array(data, pa.binary()), pa.array(names, pa.string())], ["bytes", "path"]
        )
    else:
        columns["image_path"] = pa.array(names, pa.string())
        columns["image"] = pa.array(data, pa.binary())
    if labels is not None:
        columns["label"] = pa.array(labels, pa.int64())
    return pa.table(columns)


def write_image_table(table: pa.Table, path: Path, row_group_size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


__all__ = ["image_files", "image_table", "write_image_table", "write_shards"]
