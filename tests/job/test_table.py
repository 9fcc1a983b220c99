"""The output as a Delta Lake table: every Delta reader sees exactly fdpipe's current rows, each
run is a version, writers race safely, and the upkeep commands (status, compact, vacuum,
migrate) keep an output readable, small and convertible."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result
from fdpipe.cli import main
from fdpipe.job.current import current_mask
from fdpipe.job.reader import iter_rows, read_maps
from fdpipe.job.schema import METADATA_KEY, SCHEMA
from fdpipe.job.table import DELTA_LOG, ResultsTable, TableError
from image_files import explain_command, write_images
from PIL import Image
from results import duckdb_sql

KEY = ["image_path", "method", "targets", "class_rank"]
SORT = [(k, "ascending") for k in KEY]


def invoke(args: list[str]) -> Result:
    return CliRunner().invoke(main, args)


def fdpipe_rows(output: Path, version: int | None = None) -> pa.Table:
    return pa.Table.from_batches(list(iter_rows(output, version=version)), schema=SCHEMA).sort_by(
        SORT
    )


def replace_content(path: Path, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


def duckdb_delta_scan(output: Path) -> pa.Table:
    return duckdb_sql(f"select * from delta_scan('{output}')")


def same_rows(a: pa.Table, b: pa.Table) -> None:
    a = a.select(SCHEMA.names).cast(SCHEMA).sort_by(SORT)
    b = b.select(SCHEMA.names).cast(SCHEMA).sort_by(SORT)
    assert a.num_rows == b.num_rows
    assert a.equals(b)


@pytest.fixture(scope="module")
def reruns(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    """An output after a sequence of reruns: add, change, delete with --prune, retry a failed
    image, add a method; the table version after each run."""
    root = tmp_path_factory.mktemp("reruns")
    images, output = root / "images", root / "out"
    paths = write_images(images, 5)
    broken = images / "late.jpg"
    broken.write_bytes(b"not yet")
    versions = []

    def run(*extra: str) -> None:
        result = invoke(explain_command(images, output, *extra))
        assert result.exit_code in (0, 1), result.output
        versions.append(ResultsTable(output).delta().version())

    run()  # first night: 5 ok, 1 failed
    write_images(root / "more", 7)
    shutil.copy(root / "more" / "img_006.jpg", images / "added.jpg")
    run()  # an image added
    replace_content(paths[0], seed=3)
    run()  # an image changed
    paths[1].unlink()
    run("--prune")  # an image deleted
    shutil.copy(root / "more" / "img_004.jpg", broken)
    run()  # the failed image fixed: retried
    run("--method", "layercam")  # a method added (beside gradcam)
    return output, versions


def test_every_delta_reader_sees_exactly_the_current_rows(reruns: tuple[Path, list[int]]) -> None:
    import polars as pl
    from deltalake import DeltaTable

    output, _ = reruns
    ours = fdpipe_rows(output)
    assert set(ours["status"].to_pylist()) == {"ok"}  # the retried failure is gone
    paths = set(ours["image_path"].to_pylist())
    assert "img_001.jpg" not in paths and {"added.jpg", "late.jpg"} <= paths
    assert set(ours["method"].to_pylist()) == {"gradcam", "layercam"}
    assert ours.num_rows == len(paths) * 2
    same_rows(duckdb_delta_scan(output), ours)
    same_rows(pl.read_delta(str(output)).to_arrow(), ours)
    same_rows(pa.Table.from_pandas(DeltaTable(str(output)).to_pandas(), preserve_index=False), ours)
    maps, rows = read_maps(output)
    assert rows.num_rows == ours.num_rows and maps.shape[0] == ours.num_rows


def test_each_run_is_a_version_reachable_by_time_travel(reruns: tuple[Path, list[int]]) -> None:
    output, versions = reruns
    first = fdpipe_rows(output, version=versions[0])
    assert pc.sum(pc.equal(first["status"], "failed")).as_py() == 1
    assert "img_001.jpg" in first["image_path"].to_pylist()  # pruned later, still in history
    before_prune = fdpipe_rows(output, version=versions[2])
    assert "img_001.jpg" in before_prune["image_path"].to_pylist()
    assert "img_001.jpg" not in fdpipe_rows(output, version=versions[3])["image_path"].to_pylist()
    table = ResultsTable(output)
    runs = {c["run"]["run_id"] for c in table.commits() if isinstance(c.get("run"), dict)}
    assert len(runs) == len(versions)  # every run's record travels in its commits


def test_plain_pyarrow_on_the_folder_sees_removed_files_too(
    reruns: tuple[Path, list[int]],
) -> None:
    """What the README warns about: the folder holds every version's files."""
    import pyarrow.dataset as ds

    output, _ = reruns
    every = ds.dataset(str(output), format="parquet", exclude_invalid_files=True).to_table()
    assert every.num_rows > fdpipe_rows(output).num_rows


def test_commit_replaces_the_touched_images_in_one_version(tmp_path: Path) -> None:
    table = ResultsTable(tmp_path / "t")
    rows = synthetic_rows(["a.jpg", "b.jpg"], run_id="20260101T000000000000Z-000001")
    table.commit(rows, {"run": "1"})
    again = synthetic_rows(["b.jpg"], run_id="20260102T000000000000Z-000001", value=0.25)
    version = table.commit(again, {"run": "2"}, prune=["a.jpg"])
    assert version == table.delta().version() == 1
    now = table.rows()
    assert now["image_path"].to_pylist() == ["b.jpg"]
    assert now["map"].to_pylist() == [[0.25] * 4]


@pytest.mark.parametrize("where", ["folder", "bucket"])
def test_racing_writers_on_one_shard_leave_one_set_of_current_rows(
    tmp_path: Path, request: pytest.FixtureRequest, where: str
) -> None:
    """Two writers committing the same images at once: Delta's conflict check makes the later
    one recompute from the newer snapshot; no image ends with two sets of rows. In a bucket
    (SeaweedFS) the store's conditional put refuses the second writer of a version."""
    if where == "bucket":
        store = request.getfixturevalue("s3_env")
        location: str | Path = f"s3://{store.new_bucket()}/t"
    else:
        location = tmp_path / "t"
    ResultsTable(location).commit(synthetic_rows(["a.jpg"], run_id="r0"), {})
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(4):
                names = [f"{j}.jpg" for j in range(6)]
                run = f"20260101T0000{n}{i}000000Z-00000{n}"
                ResultsTable(location).commit(synthetic_rows(names, run_id=run), {"w": n})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    table = ResultsTable(location)
    keys = table.rows().select(KEY).to_pylist()
    assert len(keys) == len({tuple(k.values()) for k in keys}) == 7
    assert table.delta().version() == 8  # every commit landed once, none overwrote another


def test_shards_in_parallel_commit_to_one_table(tmp_path: Path) -> None:
    images, output = tmp_path / "images", tmp_path / "out"
    write_images(images, 6)
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "fdpipe", "--quiet",
             *explain_command(images, output, "--shard", f"{i}/2")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]  # fmt: skip
    for run in runs:
        out, _ = run.communicate(timeout=600)
        assert run.returncode == 0, out.decode(errors="replace")
    rows = fdpipe_rows(output)
    assert sorted(rows["image_path"].to_pylist()) == sorted(
        p.relative_to(images).as_posix() for p in images.rglob("*.jpg")
    )
    status = invoke(["status", str(output), "--json"])
    assert status.exit_code == 0, status.output
    assert [s["state"] for s in json.loads(status.output)["shards"]] == ["ok", "ok"]


def test_status_names_a_missing_shard_and_failed_images(tmp_path: Path) -> None:
    images, output = tmp_path / "images", tmp_path / "out"
    write_images(images, 3)
    (images / "bad.jpg").write_bytes(b"garbage")
    assert invoke(explain_command(images, output, "--shard", "0/3")).exit_code in (0, 1)
    result = invoke(["status", str(output)])
    assert result.exit_code == 4, result.output  # shards 1 and 2 never ran
    assert "missing" in result.output
    for i in (1, 2):
        invoke(explain_command(images, output, "--shard", f"{i}/3"))
    result = invoke(["status", str(output), "--json"])
    assert result.exit_code == 1, result.output  # bad.jpg failed in its shard
    assert json.loads(result.output)["status"] == "failed"
    assert invoke(["status", str(tmp_path / "nothing")]).exit_code == 2


@pytest.mark.parametrize("content", ['{"run_id": "2026', '[1, 2, "x"]', "null", '{"status": 1}'])
def test_status_names_an_unreadable_run_record(tmp_path: Path, content: str) -> None:
    """Issue 19 (older bug): a run record that cannot be read is named; when it is the newest
    (named after every readable one) the night's outcome is unknown: exit 4."""
    images, output = tmp_path / "images", tmp_path / "out"
    write_images(images, 2)
    assert invoke(explain_command(images, output)).exit_code == 0
    older = output / "_runs" / "20000101T000000000000Z-000000.json"
    older.write_text(content)
    result = invoke(["status", str(output)])
    assert result.exit_code == 0 and f"unreadable run record: {older}" in result.output
    newer = output / "_runs" / "29991231T000000000000Z-000000.json"
    newer.write_text(content)
    result = invoke(["status", str(output), "--json"])
    assert result.exit_code == 4, result.output
    night = json.loads(result.output)
    assert night["status"] == "incomplete" and len(night["unreadable_records"]) == 2
    assert night["unreadable_records"][1].startswith(f"{newer}: ")


def test_compact_and_vacuum_keep_the_rows_and_shrink_the_folder(tmp_path: Path) -> None:
    images, output = tmp_path / "images", tmp_path / "out"
    paths = write_images(images, 6)
    assert invoke(explain_command(images, output)).exit_code == 0
    clean = folder_bytes(output)
    for seed in range(3):
        replace_content(paths[seed], seed=seed + 10)
        assert invoke(explain_command(images, output)).exit_code == 0
    before = fdpipe_rows(output)
    grown = folder_bytes(output)
    result = invoke(["compact", str(output)])
    assert result.exit_code == 0, result.output
    assert invoke(["vacuum", str(output), "--retain", "0h"]).exit_code == 0
    same_rows(fdpipe_rows(output), before)
    assert folder_bytes(output) < grown and folder_bytes(output) <= 1.5 * clean
    assert invoke(["vacuum", str(output), "--retain", "soon"]).exit_code == 2


def test_migrate_converts_the_part_layout(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    first = synthetic_rows(["a.jpg", "b.jpg", "c.jpg"], run_id="20260101T000000000000Z-000001")
    second = synthetic_rows(["b.jpg"], run_id="20260102T000000000000Z-000001", value=0.75)
    tomb = synthetic_rows(["c.jpg"], run_id="20260102T000000000000Z-000001", status="pruned")
    write_part(old / "part-000000.parquet", first)
    write_part(old / "part-000001.parquet", pa.concat_tables([second, tomb]))
    keys = pa.concat_tables([first, second, tomb])
    expected = keys.filter(current_mask(keys))
    for history in (False, True):
        new = tmp_path / f"new-{history}"
        args = ["migrate", str(old), str(new), *(["--history"] if history else [])]
        result = invoke(args)
        assert result.exit_code == 0, result.output
        same_rows(ResultsTable(new).rows(), expected)
        if history:
            assert ResultsTable(new).rows(version=0)["image_path"].to_pylist() == [
                "a.jpg", "b.jpg", "c.jpg"
            ]  # fmt: skip
    assert sorted(p.name for p in old.iterdir()) == ["part-000000.parquet", "part-000001.parquet"]
    assert invoke(["migrate", str(old), str(tmp_path / "new-False")]).exit_code == 2
    write_images(tmp_path / "images", 1)
    refused = invoke(explain_command(tmp_path / "images", old))
    assert refused.exit_code == 2 and "fdpipe migrate" in refused.output
    assert invoke(["report", str(old), "-o", str(tmp_path / "site")]).exit_code == 2


def synthetic_rows(
    names: list[str], run_id: str, value: float = 0.5, status: str = "ok"
) -> pa.Table:
    n = len(names)
    columns: dict[str, object] = {f.name: pa.nulls(n, f.type) for f in SCHEMA}
    columns |= {
        "image_path": pa.array(names),
        "image_sha256": pa.array(["0" * 64] * n),
        "model": pa.array(["m"] * n),
        "layer": pa.array(["l"] * n),
        "method": pa.array(["gradcam"] * n),
        "class_rank": pa.array([0] * n, pa.int16()),
        "map": pa.array([[value] * 4] * n, pa.list_(pa.float32())),
        "status": pa.array([status] * n),
        "targets": pa.array(["top-1"] * n),
        "run_id": pa.array([run_id] * n),
    }
    return pa.table(columns, schema=SCHEMA)


def write_part(path: Path, rows: pa.Table) -> None:
    record = {"params": {"model": "m"}, "run": {"run_id": rows["run_id"][0].as_py()}}
    pq.write_table(rows.replace_schema_metadata({METADATA_KEY: json.dumps(record)}), path)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---- hostile cases: nothing fdpipe did not write is deleted, every refusal is one line ---------


def test_a_foreign_delta_table_is_refused_and_left_untouched(tmp_path: Path) -> None:
    from deltalake import DeltaTable, write_deltalake

    write_images(tmp_path / "images", 1)
    foreign = tmp_path / "foreign"
    write_deltalake(str(foreign), pa.table({"x": [1, 2, 3]}))
    for extra in ((), ("--overwrite",)):
        result = invoke(explain_command(tmp_path / "images", foreign, *extra))
        assert result.exit_code == 2 and "did not write" in result.output, result.output
    assert DeltaTable(str(foreign)).to_pyarrow_table()["x"].to_pylist() == [1, 2, 3]
    assert DeltaTable(str(foreign)).version() == 0
    with pytest.raises(TableError, match="did not write"):
        read_maps(foreign)


def test_vacuum_never_deletes_a_file_the_table_did_not_write(tmp_path: Path) -> None:
    output = tmp_path / "out"
    ResultsTable(output).commit(synthetic_rows(["a.jpg"], run_id="r1"), RECORD)
    ResultsTable(output).commit(synthetic_rows(["a.jpg"], run_id="r2"), RECORD)
    mine = output / "README.md"
    mine.write_text("the user's notes")
    orphan = output / "part-00000-killed-before-its-commit.zstd.parquet"
    orphan.write_bytes(b"PAR1")
    old = time.time() - 10 * 86400
    for path in (mine, orphan):
        os.utime(path, (old, old))
    result = invoke(["vacuum", str(output), "--retain", "0h"])
    assert result.exit_code == 0, result.output
    assert mine.read_text() == "the user's notes" and not orphan.exists()
    assert ResultsTable(output).rows()["run_id"].to_pylist() == ["r2"]


def test_migrate_writes_only_into_a_new_or_empty_folder(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    write_part(old / "part-000000.parquet", synthetic_rows(["a.jpg"], run_id="r1"))
    before = sorted(p.name for p in tmp_path.iterdir())
    result = invoke(["migrate", str(old), str(tmp_path)])  # OLD's parent, not empty
    assert result.exit_code == 2 and "new or empty" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_readers_after_compact_still_find_the_run(tmp_path: Path) -> None:
    output = tmp_path / "out"
    table = ResultsTable(output)
    table.commit(synthetic_rows(["a.jpg", "b.jpg"], run_id="r1"), RECORD)
    assert invoke(["compact", str(output)]).exit_code == 0
    assert table.metadata()["run"] == RECORD["run"]  # not the compact commit's record


@pytest.mark.parametrize(
    "version", [-1, 10**9, "not-a-date", "", "2000-01-01T00:00:00Z", 1.5, True]
)
def test_a_version_that_does_not_exist_is_a_one_line_error(tmp_path: Path, version: object) -> None:
    output = tmp_path / "out"
    ResultsTable(output).commit(synthetic_rows(["a.jpg"], run_id="r1"), RECORD)
    with pytest.raises(TableError):
        read_maps(output, version=version)  # type: ignore[arg-type]


def test_a_damaged_log_and_odd_paths_are_one_line_errors(tmp_path: Path) -> None:
    output = tmp_path / "out"
    ResultsTable(output).commit(synthetic_rows(["a.jpg"], run_id="r1"), RECORD)
    (output / "_delta_log" / "00000000000000000000.json").write_text("{not json")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for args in (
        ["compact", str(output)],
        ["vacuum", str(output)],
        ["render", str(output), "-o", str(tmp_path / "png")],
        ["compact", str(fifo)],
        ["vacuum", str(fifo)],
        ["vacuum", str(output), "--retain", "999999999999d"],
        ["status", str(output), "--window", "99999999999999999999d"],
    ):
        result = invoke(args)
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 3


RECORD: dict[str, object] = {"params": {"model": "m"}, "run": {"input_root": "/nowhere"}}


def test_a_table_under_a_path_with_spaces_and_accents(tmp_path: Path) -> None:
    """delta-rs percent-encodes its file URIs; fdpipe opens the files themselves."""
    output = tmp_path / "nightly out é"
    ResultsTable(output).commit(synthetic_rows(["a b.jpg"], run_id="r1"), RECORD)
    assert ResultsTable(output).rows()["image_path"].to_pylist() == ["a b.jpg"]
    assert all(path.is_file() for path in ResultsTable(output).data_files())
    with pytest.raises(TableError, match="'%'"):  # delta-rs would read "%20" as a space
        ResultsTable(tmp_path / "out%20")


def test_status_never_waits_on_a_fifo_record(tmp_path: Path) -> None:
    images, output = tmp_path / "images", tmp_path / "out"
    write_images(images, 1)
    assert invoke(explain_command(images, output)).exit_code == 0
    fifo = output / "_runs" / "29991231T000000000000Z-000000.json"
    os.mkfifo(fifo)
    done = subprocess.run(
        [sys.executable, "-m", "fdpipe", "status", str(output)], capture_output=True, timeout=60
    )
    said = done.stdout.decode()  # named as unreadable (the newest: the night is incomplete)
    assert done.returncode == 4 and str(fifo) in said and "not a regular file" in said, said


def test_vacuum_counts_only_what_it_deleted_in_the_table(tmp_path: Path) -> None:
    """A tampered log's ``remove`` of a file outside the table: delta-rs leaves the file, and
    fdpipe's count said it was deleted (found by the hostile pass)."""
    output, victim = tmp_path / "out", tmp_path / "outside" / "victim.txt"
    ResultsTable(output).commit(synthetic_rows(["a.jpg"], run_id="r1"), RECORD)
    ResultsTable(output).commit(synthetic_rows(["a.jpg"], run_id="r2"), RECORD)
    victim.parent.mkdir()
    victim.write_text("precious")
    newest = sorted((output / DELTA_LOG).glob("*.json"))[-1]
    remove = {"path": "../outside/victim.txt", "deletionTimestamp": 0, "dataChange": True}
    newest.write_text(newest.read_text() + json.dumps({"remove": remove}) + "\n")
    before = {p.name for p in output.glob("*.parquet")}
    result = invoke(["vacuum", str(output), "--retain", "0h"])
    gone = before - {p.name for p in output.glob("*.parquet")}
    assert result.exit_code == 0 and f"deleted {len(gone)} file(s)" in result.output, result.output
    assert victim.read_text() == "precious" and len(gone) == 1
