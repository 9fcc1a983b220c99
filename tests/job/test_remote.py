"""An output on an object store (``-o s3://...``), against a real S3 server on loopback
(SeaweedFS): the same rows as a local output after the same reruns, read back by every reader
and Delta reader, kept by status/compact/vacuum, safe under two writers (conditional put), and
every store that cannot be used is a one-line refusal before any work."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result
from fdpipe.bench.object_store import READ_KEY, READ_SECRET, SeaweedFS, free_ports
from fdpipe.cli import main
from fdpipe.job.reader import iter_rows, read_maps
from fdpipe.job.remote import PROMPT, delta_options
from fdpipe.job.schema import SCHEMA
from fdpipe.job.status import run_records
from image_files import explain_command, write_images
from PIL import Image

KEY = ["image_path", "method", "targets", "class_rank"]
SORT = [(k, "ascending") for k in KEY]
VARYING = {"run_id", "seconds"}  # what two runs of the same work differ in


def invoke(args: list[str]) -> Result:
    return CliRunner().invoke(main, args)


def options_of(store: SeaweedFS) -> list[str]:
    """``--storage-option`` arguments naming the store (fsspec's names, as for an input)."""
    return [f"--storage-option={k}={v}" for k, v in store.storage_options.items()]


def rows(output: str | Path, options: dict[str, Any] | None = None) -> pa.Table:
    from fdpipe.job.reader import CurrentRows

    stored = CurrentRows(output, options=options)
    return pa.Table.from_batches(list(iter_rows(stored)), schema=SCHEMA).sort_by(SORT)


FLOATS = {"logit", "probability", "map", "raw_min", "raw_max", "weights"}


def same_work(a: pa.Table, b: pa.Table, *, tolerance: float = 0.0) -> None:
    """The same rows; with a ``tolerance``, the computed floats within it (runs in processes of
    other torch thread counts reduce in another order: as in ``tests/job/test_faults.py``)."""
    exact = [c for c in SCHEMA.names if c not in VARYING and not (tolerance and c in FLOATS)]
    assert a.num_rows == b.num_rows > 0
    assert a.select(exact).equals(b.select(exact))
    for column in FLOATS if tolerance else ():
        for x, y in zip(a[column].to_pylist(), b[column].to_pylist(), strict=True):
            np.testing.assert_allclose(
                np.asarray(x, dtype=float), np.asarray(y, dtype=float), atol=tolerance
            )


def counts(output: str | Path, options: dict[str, Any] | None = None) -> dict[str, int]:
    return run_records(output, options)[-1]["counts"]  # type: ignore[return-value]


def replace_content(path: Path, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


def images_with_a_broken_one(folder: Path, count: int) -> list[Path]:
    paths = write_images(folder, count)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return paths


def test_a_bucket_output_equals_a_local_one_after_the_same_reruns(
    tmp_path: Path, s3_env: SeaweedFS
) -> None:
    import polars as pl

    images = tmp_path / "images"
    paths = images_with_a_broken_one(images, 5)
    local, remote = tmp_path / "local", f"s3://{s3_env.new_bucket()}/nightly/out"
    for output in (local, remote):
        result = invoke(explain_command(images, output))
        assert result.exit_code == 1, result.output  # the broken file fails, on both
    same_work(rows(local), rows(remote))
    assert not list(tmp_path.glob("nightly*")) and not Path("s3:").exists()  # nothing local

    write_images(tmp_path / "more", 7)
    shutil.copy(tmp_path / "more" / "img_006.jpg", images / "added.jpg")  # add
    replace_content(paths[0], seed=3)  # change
    paths[1].unlink()  # delete
    shutil.copy(tmp_path / "more" / "img_004.jpg", images / "broken.jpg")  # fix: a retry
    for output in (local, remote):
        assert invoke(explain_command(images, output, "--prune")).exit_code == 0
    assert counts(local) == counts(remote)
    assert {k: counts(remote)[k] for k in ("new", "changed", "retried", "pruned")} == dict(
        new=1, changed=1, retried=1, pruned=1
    )
    assert invoke(explain_command(images, remote)).exit_code == 0  # nothing left to do
    assert counts(remote)["ok"] == 0 and counts(remote)["skipped"] == 6
    same_work(rows(local), rows(remote))
    # a Delta reader of its own sees exactly fdpipe's current rows, with no rule applied
    theirs_options = {k: v for k, v in delta_options(remote, None).items() if k not in PROMPT}
    theirs = pl.read_delta(remote, storage_options=theirs_options).to_arrow()
    same_work(theirs.select(SCHEMA.names).cast(SCHEMA).sort_by(SORT), rows(remote))


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory, s3_store: SeaweedFS) -> dict[str, Any]:
    """One local and one bucket output of the same images; the bucket named by
    ``--storage-option`` alone (no AWS variables)."""
    root = tmp_path_factory.mktemp("outputs")
    images = root / "images"
    write_images(images, 4)
    local, remote = root / "local", f"s3://{s3_store.new_bucket()}/out"
    flags = options_of(s3_store)
    assert invoke(explain_command(images, local)).exit_code == 0
    result = invoke(explain_command(images, remote, *flags))  # type: ignore[arg-type]
    assert result.exit_code == 0, result.output
    return {"local": local, "remote": remote, "flags": flags, "root": root,
            "options": s3_store.storage_options}  # fmt: skip


def test_readers_read_a_bucket_as_they_read_a_folder(outputs: dict[str, Any]) -> None:
    local, remote, flags, root = (outputs[k] for k in ("local", "remote", "flags", "root"))
    here, rows_here = read_maps(local)
    there, rows_there = read_maps(remote, storage_options=outputs["options"])
    assert np.array_equal(here, there) and here.shape[0] == 4
    assert rows_here.drop_columns(list(VARYING)).equals(rows_there.drop_columns(list(VARYING)))
    for name, output in (("local", local), ("remote", remote)):
        result = invoke(["render", str(output), "--to", str(root / f"png-{name}"), *flags])
        assert result.exit_code == 0, result.output
        result = invoke(["report", str(output), "-o", str(root / f"site-{name}"), *flags])
        assert result.exit_code == 0, result.output
        assert "4 images (0 failed)" in result.output
    pngs = {p.name: p.read_bytes() for p in (root / "png-local").rglob("*.png")}
    assert len(pngs) == 4
    assert pngs == {p.name: p.read_bytes() for p in (root / "png-remote").rglob("*.png")}
    site = (root / "site-remote" / "index.html").read_text()
    assert "gradcam" in site and "_runs" not in str(outputs["remote"])
    status = invoke(["status", remote, "--json", *flags])
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)["shards"][0]["ok"] == 4


def test_evaluate_reads_maps_from_a_bucket(outputs: dict[str, Any]) -> None:
    reports = {}
    for name in ("local", "remote"):
        target = outputs["root"] / f"eval-{name}"
        result = invoke(["evaluate", "--maps", str(outputs[name]), "-o", str(target),
                         "--limit", "2", "--overlays", "0", *outputs["flags"]])  # fmt: skip
        assert result.exit_code == 0, result.output
        reports[name] = json.loads((target / "results.json").read_text())["summary"]
    assert reports["local"] == reports["remote"]


def test_status_compact_and_vacuum_on_a_bucket(tmp_path: Path, s3_env: SeaweedFS) -> None:
    images = tmp_path / "images"
    paths = write_images(images, 4)
    output = f"s3://{s3_env.new_bucket()}/out"
    assert invoke(explain_command(images, output)).exit_code == 0
    for seed in range(2):
        replace_content(paths[seed], seed=seed + 10)
        assert invoke(explain_command(images, output)).exit_code == 0
    before = rows(output)
    prefix = output.removeprefix("s3://")
    stored = len(s3_env.filesystem().glob(f"{prefix}/*.parquet"))
    result = invoke(["compact", output])
    assert result.exit_code == 0 and "rewritten into 1" in result.output, result.output
    result = invoke(["vacuum", output, "--retain", "0h"])
    assert result.exit_code == 0 and f"deleted {stored} file(s)" in result.output, result.output
    same_work(rows(output), before)
    assert len(s3_env.filesystem().glob(f"{prefix}/*.parquet")) == 1 < stored
    status = invoke(["status", output])
    assert status.exit_code == 0 and "ok" in status.output, status.output


@pytest.mark.parametrize("shards", [("0/1", "0/1"), ("0/2", "1/2")], ids=["one shard", "two"])
def test_two_runs_at_once_into_a_bucket(
    tmp_path: Path, s3_env: SeaweedFS, shards: tuple[str, str]
) -> None:
    """No lock file on a store: two runs of one shard both work and the table keeps one set of
    rows; two shards commit to one table, all rows, and status is ok for the night."""
    images = tmp_path / "images"
    write_images(images, 6)
    output = f"s3://{s3_env.new_bucket()}/out"
    runs = [
        subprocess.Popen([sys.executable, "-m", "fdpipe", "--quiet",
                          *explain_command(images, output, "--shard", shard)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for shard in shards
    ]  # fmt: skip
    for run in runs:
        out, _ = run.communicate(timeout=600)
        assert run.returncode == 0, out.decode(errors="replace")
    current = rows(output)
    keys = current.select(KEY).to_pylist()
    assert len(keys) == len({tuple(k.values()) for k in keys}) == 6
    status = invoke(["status", output, "--json"])
    assert status.exit_code == 0, status.output
    night = json.loads(status.output)["shards"]
    assert [s["state"] for s in night] == ["ok"] * (2 if shards[1] == "1/2" else 1)


def test_a_store_that_ignores_conditional_writes_is_refused(
    tmp_path: Path, s3_env: SeaweedFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its commits could overwrite each other: refused, unless the user promises one writer."""
    import fdpipe.job.remote as remote

    monkeypatch.setattr(remote, "refuses_second_create", lambda fs, path: False)
    images = tmp_path / "images"
    write_images(images, 2)
    output = f"s3://{s3_env.new_bucket()}/out"
    result = invoke(explain_command(images, output))
    assert result.exit_code == 2 and "If-None-Match" in result.output, result.output
    written = s3_env.filesystem().find(output.removeprefix("s3://"))
    assert not [name for name in written if "_delta_log" in name or "_runs" in name]
    result = invoke(
        explain_command(images, output, "--storage-option", "AWS_S3_ALLOW_UNSAFE_RENAME=true")
    )
    assert result.exit_code == 0, result.output  # fmt: skip
    assert rows(output).num_rows == 2


def unreachable() -> str:
    return f"http://127.0.0.1:{free_ports(1)[0]}"  # a port no one listens on


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no credentials", "no credentials found"),
        ("unreachable", "cannot be reached"),
        ("no bucket", "no such bucket"),
        ("read-only", "may not write"),
        ("foreign table", "fdpipe did not write"),
    ],
)
def test_a_store_that_cannot_be_used_is_a_one_line_refusal(
    tmp_path: Path,
    s3_env: SeaweedFS,
    aws_env_only: None,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    message: str,
) -> None:
    from deltalake import DeltaTable, write_deltalake

    images = tmp_path / "images"
    write_images(images, 2)
    bucket = s3_env.new_bucket()
    output = f"s3://{bucket}/out"
    if case == "no credentials":
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    elif case == "unreachable":
        monkeypatch.setenv("AWS_ENDPOINT_URL", unreachable())
    elif case == "no bucket":
        output = f"s3://{bucket}-missing/out"
    elif case == "read-only":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", READ_KEY)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", READ_SECRET)
    else:
        write_deltalake(output, pa.table({"x": [1, 2]}),
                        storage_options=delta_options(output, None))  # fmt: skip
    result = invoke(explain_command(images, output))
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert message in line and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 3  # the log lines, then the one error
    for command in (["status", output], ["compact", output], ["vacuum", output]):
        result = invoke(command)
        assert result.exit_code == 2, (command, result.output)
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    if case == "foreign table":  # left as it was
        table = DeltaTable(output, storage_options=delta_options(output, None))
        assert table.version() == 0 and table.to_pyarrow_table().num_rows == 2


def test_migrate_into_a_bucket_is_refused_without_a_local_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "old").mkdir()
    monkeypatch.chdir(tmp_path)
    result = invoke(["migrate", str(tmp_path / "old"), "s3://bucket/new"])
    assert result.exit_code == 2 and "migrate writes a local folder" in result.output
    assert not (tmp_path / "s3:").exists()  # what a Path of the URL would have made


def test_resume_after_sigkill_into_a_bucket(tmp_path: Path, s3_env: SeaweedFS) -> None:
    """A run into the bucket killed after its first commit, then rerun: the rows of an
    uninterrupted run (as into a folder)."""
    import signal
    import time

    images = tmp_path / "images"
    write_images(images, 8)
    killed, whole = (f"s3://{s3_env.new_bucket()}/out" for _ in range(2))
    code = "import sys; from fdpipe.cli import main; sys.exit(main())"
    process = subprocess.Popen([sys.executable, "-c", code, *explain_command(images, killed)],
                               stderr=subprocess.DEVNULL)  # fmt: skip
    log = f"{killed.removeprefix('s3://')}/_delta_log/*.json"
    deadline = time.monotonic() + 600  # a ceiling for a loaded machine, not a timing
    while not s3_env.filesystem().glob(log) and process.poll() is None:
        assert time.monotonic() < deadline, "no commit appeared"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run finished before it was killed"
    for output in (killed, whole):
        assert invoke(explain_command(images, output)).exit_code == 0
    assert counts(killed)["skipped"] > 0  # the committed part was kept
    same_work(rows(killed), rows(whole), tolerance=1e-5)  # its first part from a subprocess


def test_a_prefix_with_a_space_reads_back_and_a_percent_is_refused(
    tmp_path: Path, s3_env: SeaweedFS
) -> None:
    """delta-rs percent-encodes its file URIs and decodes '%20' in a table's URL, fsspec does
    neither: a space must read back, and a '%' (table and records in two places) is refused."""
    images = tmp_path / "images"
    write_images(images, 2)
    bucket = s3_env.new_bucket()
    spaced = f"s3://{bucket}/night runs/out"
    assert invoke(explain_command(images, spaced)).exit_code == 0
    maps, _ = read_maps(spaced)
    assert maps.shape[0] == 2
    result = invoke(explain_command(images, f"s3://{bucket}/x%20y"))
    assert result.exit_code == 2 and "'%'" in result.output, result.output
    assert not s3_env.filesystem().glob(f"{bucket}/x*")


def test_a_bucket_table_written_before_the_role_column_takes_new_runs(
    tmp_path: Path, s3_env: SeaweedFS
) -> None:
    """Issue 19 item 4 on a store: a table whose Delta schema lacks ``target_role`` takes a
    rerun (schema evolution through delta-rs' object store)."""
    from deltalake import CommitProperties, DeltaTable, write_deltalake
    from fdpipe.job.table import COMMIT_KEY, ResultsTable

    images = tmp_path / "images"
    write_images(images, 2)
    output = f"s3://{s3_env.new_bucket()}/out"
    assert invoke(explain_command(images, output)).exit_code == 0
    options = delta_options(output, s3_env.storage_options)
    old = DeltaTable(output, storage_options=options).to_pyarrow_table()
    record = ResultsTable(output, s3_env.storage_options).commits()[0]
    record.pop("version")
    write_deltalake(
        output, old.drop_columns(["target_role"]), mode="overwrite", schema_mode="overwrite",
        storage_options=options,
        commit_properties=CommitProperties(custom_metadata={COMMIT_KEY: json.dumps(record)}),
    )  # fmt: skip
    assert (
        "target_role"
        not in DeltaTable(output, storage_options=options).to_pyarrow_table().column_names
    )
    result = invoke(explain_command(images, output, "--top-k", "2"))
    assert result.exit_code == 0, result.output
    roles = sorted(str(r["target_role"]) for r in rows(output).to_pylist())
    assert roles == ["prediction"] * 4


def test_a_data_file_deleted_from_a_bucket_is_named_and_redone(
    tmp_path: Path, s3_env: SeaweedFS
) -> None:
    """As in a folder (``tests/job/test_reader_damage.py``): readers name the missing file and
    go on; explain removes it from the table and explains its images again (it was a
    traceback)."""
    images = tmp_path / "images"
    write_images(images, 4)
    output = f"s3://{s3_env.new_bucket()}/out"
    assert invoke(explain_command(images, output, "--part-size", "2")).exit_code == 0
    whole = rows(output)
    fs = s3_env.filesystem()
    files = sorted(fs.glob(f"{output.removeprefix('s3://')}/*.parquet"))
    assert len(files) == 2
    with fs.open(files[0]) as fh:  # how the images fell into the two files varies
        lost = pq.read_metadata(fh).num_rows
    fs.rm(files[0])
    result = invoke(["render", output, "-o", str(tmp_path / "png")])
    drawn = len(list((tmp_path / "png").rglob("*.png")))  # nested/ images in a subfolder
    assert result.exit_code == 0 and drawn == whole.num_rows - lost > 0, result.output
    result = invoke(explain_command(images, output))
    assert (result.exit_code == 0 and result.exception is None) or isinstance(
        result.exception, SystemExit
    ), result.output
    same_work(rows(output), whole)
