"""Incremental reruns: what changed is explained again, readers see only current rows, a SIGKILL at
any point then a rerun equals the uninterrupted result; empty inputs, run records, exit codes."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner, Result
from fdpipe.cli import main
from fdpipe.job.reader import iter_rows
from image_files import explain_command, write_images
from PIL import Image
from results import commit_versions, duckdb_sql

KEY = [("image_path", "ascending"), ("method", "ascending"), ("class_rank", "ascending")]
FLOATS = ["logit", "probability", "raw_min", "raw_max"]  # batch composition moves their last bits
VARYING = ["run_id", "seconds", "map", "file_mtime_ns", "file_size", *FLOATS]


def invoke(args: list[str]) -> Result:
    return CliRunner().invoke(main, args)


def current(output: Path) -> pa.Table:
    """What fdpipe's readers see."""
    return pa.Table.from_batches(list(iter_rows(output))).sort_by(KEY)


def assert_same(a: pa.Table, b: pa.Table) -> None:
    assert a.drop_columns(VARYING).equals(b.drop_columns(VARYING))
    for name in FLOATS:
        x, y = (t[name].to_numpy(zero_copy_only=False) for t in (a, b))
        np.testing.assert_allclose(x, y, rtol=1e-5)
    for x, y in zip(a["map"].to_pylist(), b["map"].to_pylist(), strict=True):
        assert (x is None and y is None) or np.allclose(x, y, atol=1e-6)


def one_row_per_key(table: pa.Table) -> None:
    keys = table.select(["image_path", "method", "targets", "class_rank"]).to_pylist()
    assert len(keys) == len({tuple(key.values()) for key in keys})


def replace_content(path: Path, seed: int) -> None:
    """New bytes at the same path (a different picture)."""
    pixels = np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


def test_failed_image_fixed_between_runs_is_explained_and_exits_zero(tmp_path: Path) -> None:
    write_images(tmp_path / "images", 3)
    broken = tmp_path / "images" / "late.jpg"
    broken.write_bytes(b"")  # e.g. a copy still in progress
    args = explain_command(tmp_path / "images", tmp_path / "out")
    assert invoke(args).exit_code == 1
    write_images(tmp_path / "spare", 4)
    shutil.copy(tmp_path / "spare" / "img_003.jpg", broken)
    fixed = invoke(args)
    assert fixed.exit_code == 0, fixed.output
    assert "done 1, failed 0, skipped 3" in fixed.output and "retried 1" in fixed.output
    rows = current(tmp_path / "out")
    assert set(rows["status"].to_pylist()) == {"ok"} and rows.num_rows == 4
    assert invoke(args).exit_code == 0  # and a further rerun has nothing to do


def test_replaced_image_is_explained_again_and_read_once(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "images", 3)
    args = explain_command(tmp_path / "images", tmp_path / "out", "--top-k", "2")
    assert invoke(args).exit_code == 0
    before = current(tmp_path / "out")
    first_run = commit_versions(tmp_path / "out")[-1]
    replace_content(paths[0], seed=1)
    again = invoke(args)
    assert again.exit_code == 0, again.output
    assert "done 1" in again.output and "changed 1" in again.output
    after = current(tmp_path / "out")
    one_row_per_key(after)
    assert after.num_rows == before.num_rows == 6
    key = paths[0].relative_to(tmp_path / "images").as_posix()
    new_sha = hashlib.sha256(paths[0].read_bytes()).hexdigest()
    mine = after.filter(pa.compute.equal(after["image_path"], key))
    assert set(mine["image_sha256"].to_pylist()) == {new_sha}
    old = pa.Table.from_batches(list(iter_rows(tmp_path / "out", version=first_run)))
    assert old.num_rows == 6  # the superseded rows stay reachable by time travel
    assert set(
        old.filter(pa.compute.equal(old["image_path"], key))["image_sha256"].to_pylist()
    ) != {new_sha}
    paths[1].touch()  # a new mtime with the same bytes: rehashed, not explained again
    assert "done 0, failed 0, skipped 3" in invoke(args).output


def test_deleted_image_is_pruned_only_with_prune(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "images", 3)
    args = explain_command(tmp_path / "images", tmp_path / "out")
    assert invoke(args).exit_code == 0
    paths[1].unlink()
    assert current(tmp_path / "out").num_rows == 3
    kept = invoke(args)
    assert "pruned 0" in kept.output and current(tmp_path / "out").num_rows == 3
    pruned = invoke([*args, "--prune"])
    assert pruned.exit_code == 0 and "pruned 1" in pruned.output
    rows = current(tmp_path / "out")
    assert paths[1].name not in "".join(rows["image_path"].to_pylist())
    assert rows.num_rows == 2
    shutil.copy(paths[0], paths[1])  # it comes back: explained as new
    back = invoke(args)
    assert "new 1" in back.output and current(tmp_path / "out").num_rows == 3


def test_second_method_and_class_set_add_rows(tmp_path: Path) -> None:
    write_images(tmp_path / "images", 3)
    args = explain_command(tmp_path / "images", tmp_path / "out")
    assert invoke(args).exit_code == 0
    first = current(tmp_path / "out")
    added = invoke([a if a != "gradcam" else "gradcam,layercam" for a in args])
    assert added.exit_code == 0, added.output
    assert "added 3" in added.output
    rows = current(tmp_path / "out")
    one_row_per_key(rows)
    assert sorted(set(rows["method"].to_pylist())) == ["gradcam", "layercam"]
    gradcam = rows.filter(pa.compute.equal(rows["method"], "gradcam"))
    assert gradcam["run_id"].equals(first["run_id"])  # gradcam was not computed again
    classes = invoke([*args, "--classes", "1,2"])
    assert classes.exit_code == 0
    rows = current(tmp_path / "out")
    assert sorted(set(rows["targets"].to_pylist())) == ["classes=1,2", "top-1"]
    assert rows.num_rows == 3 * 2 + 3 * 2
    variant = invoke([*args, "--method", "fdcam", "--fd-threshold", "0.9"])
    assert variant.exit_code == 0
    refused = invoke([*args, "--method", "fdcam", "--fd-threshold", "0.8"])
    assert refused.exit_code == 2
    assert "method 'fdcam' with other options (threshold: 0.9 -> 0.8)" in refused.output


def test_empty_or_missing_input_exits_three(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for source in (tmp_path / "empty", tmp_path / "unmounted"):
        result = invoke(explain_command(source, tmp_path / "out", "--prune"))
        assert result.exit_code == 3, result.output
        assert "nothing to do" in result.output
        allowed = invoke(explain_command(source, tmp_path / "out", "--allow-empty"))
        assert allowed.exit_code == 0


def test_empty_input_never_prunes(tmp_path: Path) -> None:
    write_images(tmp_path / "images", 2)
    assert invoke(explain_command(tmp_path / "images", tmp_path / "out")).exit_code == 0
    for path in (tmp_path / "images").rglob("*.jpg"):
        path.unlink()
    result = invoke(
        explain_command(tmp_path / "images", tmp_path / "out", "--prune", "--allow-empty")
    )
    assert result.exit_code == 0
    assert current(tmp_path / "out").num_rows == 2  # an unmounted share must not wipe the output


def test_run_record_lists_every_failure(tmp_path: Path) -> None:
    write_images(tmp_path / "images", 2)
    for name in ("a.jpg", "b.png"):
        (tmp_path / "images" / name).write_bytes(b"garbage")
    summary = tmp_path / "summary.json"
    result = invoke(
        explain_command(tmp_path / "images", tmp_path / "out", "--summary", str(summary))
    )
    assert result.exit_code == 1
    (path,) = (tmp_path / "out" / "_runs").glob("*.json")
    record = json.loads(path.read_text())
    assert json.loads(summary.read_text()) == record
    assert path.stem == record["run_id"] and record["run_id"][:8].isdigit()
    assert sorted(f["image_path"] for f in record["failures"]) == ["a.jpg", "b.png"]
    assert all(f["error"] for f in record["failures"])
    assert record["counts"] == {
        "new": 4, "changed": 0, "retried": 0, "added": 0, "ok": 2, "failed": 2, "skipped": 0,
        "pruned": 0, "failed_before": 0,
    }  # fmt: skip
    assert record["exit_code"] == 1 and record["status"] == "complete"
    assert record["params"]["model"] == "squeezenet1_1" and record["versions"]["torch"]
    assert record["peak_memory_bytes"] > 10**7 and record["timings"]["seconds"] > 0
    assert record["commits"] == commit_versions(tmp_path / "out")


def test_each_failure_is_logged_with_path_and_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_images(tmp_path / "images", 1)
    (tmp_path / "images" / "bad.jpg").write_bytes(b"garbage")
    invoke(explain_command(tmp_path / "images", tmp_path / "out"))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("failed: ")]
    assert len(lines) == 1 and lines[0].startswith("failed: bad.jpg: ")


# SIGKILL during each kind of rerun, then a rerun: the same as a run that was never killed.


def fdpipe_process(args: list[str]) -> subprocess.Popen:
    code = "import sys; from fdpipe.cli import main; sys.exit(main())"
    return subprocess.Popen([sys.executable, "-c", code, *args], stderr=subprocess.DEVNULL)


def kill_after_a_part(args: list[str], output: Path) -> None:
    log = output / "_delta_log"
    before = set(log.glob("*.json"))
    process = fdpipe_process(args)
    deadline = time.monotonic() + 600  # a ceiling for a loaded machine, not a timing
    while set(log.glob("*.json")) == before and process.poll() is None:
        assert time.monotonic() < deadline, "no commit appeared"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed"


def change_all(images: Path) -> None:
    for i, path in enumerate(sorted(images.rglob("*.jpg"))):
        replace_content(path, seed=100 + i)
    sorted(images.rglob("*.jpg"))[-1].unlink()


def break_all(images: Path) -> None:
    for path in images.rglob("*.jpg"):
        path.write_bytes(b"")


SCENARIOS: dict[str, tuple[Callable[[Path], None] | None, Callable[[Path], None] | None, list]] = {
    # before the first run, between the runs, extra arguments of the second run
    "changed and pruned": (None, change_all, ["--prune"]),
    "retried": (break_all, None, []),
    "method added": (None, None, ["--method", "layercam"]),
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_sigkill_during_a_rerun_then_rerun_equals_uninterrupted(
    tmp_path: Path, scenario: str
) -> None:
    spoil, change, extra = SCENARIOS[scenario]
    outputs = {}
    for name in ("killed", "uninterrupted"):
        images = tmp_path / name / "images"
        write_images(images, 10)
        if spoil:
            spoil(images)
        output = tmp_path / name / "out"
        invoke(explain_command(images, output))
        if spoil:
            write_images(images, 10)  # the files are fixed
        if change:
            change(images)
        second = explain_command(images, output, *extra)
        if name == "killed":
            kill_after_a_part(second, output)
        result = invoke(second)
        assert result.exit_code == 0, result.output
        outputs[name] = current(output)
    killed, uninterrupted = outputs["killed"], outputs["uninterrupted"]
    one_row_per_key(killed)
    assert_same(killed, uninterrupted)


def test_read_maps(tmp_path: Path) -> None:
    import fdpipe
    from fdpipe.job.reader import FilterError

    paths = write_images(tmp_path / "images", 3)
    (tmp_path / "images" / "bad.jpg").write_bytes(b"garbage")
    args = explain_command(
        tmp_path / "images", tmp_path / "out", "--method", "layercam", "--top-k", "2"
    )
    assert invoke(args).exit_code == 1
    replace_content(paths[0], seed=5)
    assert invoke(args).exit_code == 1
    maps, rows = fdpipe.read_maps(tmp_path / "out")
    assert maps.shape == (3 * 2 * 2, 13, 13) and maps.dtype == np.float32
    one_row_per_key(rows)
    assert "map" not in rows.column_names and set(rows["status"].to_pylist()) == {"ok"}
    assert rows.schema.field("map_height").type == pa.int32()
    assert rows.to_pandas()["class_index"].dtype == np.int32  # no failed row turns it to float
    stored = current(tmp_path / "out").filter(
        pa.compute.equal(current(tmp_path / "out")["status"], "ok")
    )
    for i, row in enumerate(rows.to_pylist()):
        (match,) = [
            r for r in stored.to_pylist()
            if r["status"] == "ok" and (r["image_path"], r["method"], r["class_rank"])
            == (row["image_path"], row["method"], row["class_rank"])
        ]  # fmt: skip
        np.testing.assert_array_equal(maps[i].ravel(), np.float32(match["map"]))
    first = rows["class_name"][0].as_py()
    some, chosen = fdpipe.read_maps(
        tmp_path / "out", "layercam", classes=[first], images="img_00*", ranks=[0, 1]
    )
    assert set(chosen["method"].to_pylist()) == {"layercam"}
    assert set(chosen["class_name"].to_pylist()) == {first} and len(some) == chosen.num_rows
    full, full_rows = fdpipe.read_maps(tmp_path / "out", ["gradcam"], size="original")
    assert [m.shape for m in full] == [(48, 64)] * full_rows.num_rows
    for bad in ({"method": "typo"}, {"classes": [999]}, {"images": "zzz*"}):
        with pytest.raises(FilterError):
            fdpipe.read_maps(tmp_path / "out", **bad)  # type: ignore[arg-type]


def test_readme_sql_sees_what_fdpipe_readers_see(tmp_path: Path) -> None:
    """The DuckDB query in the README ("Reading the output") against the reader, after every
    kind of rerun: a retried, a replaced and a pruned image and an added method."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    sql = readme.split("```sql\n")[1].split("```")[0]
    paths = write_images(tmp_path / "images", 4)
    (tmp_path / "images" / "late.jpg").write_bytes(b"")
    args = explain_command(tmp_path / "images", tmp_path / "out")
    invoke(args)
    shutil.copy(paths[3], tmp_path / "images" / "late.jpg")
    replace_content(paths[0], seed=9)
    paths[1].unlink()
    assert invoke([*args, "--prune"]).exit_code == 0
    (tmp_path / "images" / "gone.jpg").write_bytes(b"")  # failing now
    invoke([*args, "--method", "layercam"])
    query = sql.replace("'out/run'", f"'{tmp_path / 'out'}'")
    rows = duckdb_sql(query)
    plain = rows.sort_by(KEY).select(["image_path", "method", "run_id"])
    ours = current(tmp_path / "out").select(["image_path", "method", "run_id"])
    assert plain.num_rows == ours.num_rows == 4 * 2 + 1
    assert plain.to_pylist() == ours.to_pylist()


def test_unwritable_summary_is_a_setting_error_before_any_work(tmp_path: Path) -> None:
    write_images(tmp_path / "images", 1)
    (tmp_path / "file").write_text("")  # the record would go under a file, not a directory
    summary = str(tmp_path / "file" / "run.json")
    result = invoke(explain_command(tmp_path / "images", tmp_path / "out", "--summary", summary))
    assert result.exit_code == 2, result.output
    assert "cannot write the run record" in result.output
    assert not commit_versions(tmp_path / "out")


def test_sharded_reruns_equal_one_unsharded_run(tmp_path: Path) -> None:
    from fdpipe.job.inputs import shard_of

    paths = write_images(tmp_path / "images", 6)
    keys = {p: p.relative_to(tmp_path / "images").as_posix() for p in paths}
    shared = tmp_path / "shared"
    for i in (0, 1):
        assert (
            invoke(explain_command(tmp_path / "images", shared, "--shard", f"{i}/2")).exit_code == 0
        )
    in_shard_1 = [p for p in paths if shard_of(keys[p], 2) == 1]
    in_shard_0 = [p for p in paths if shard_of(keys[p], 2) == 0]
    replace_content(in_shard_0[0], seed=11)
    in_shard_1[0].unlink()
    only_0 = invoke(explain_command(tmp_path / "images", shared, "--shard", "0/2", "--prune"))
    assert "changed 1" in only_0.output and "pruned 0" in only_0.output  # not its image
    only_1 = invoke(explain_command(tmp_path / "images", shared, "--shard", "1/2", "--prune"))
    assert "changed 0" in only_1.output and "pruned 1" in only_1.output
    whole = tmp_path / "whole"
    assert invoke(explain_command(tmp_path / "images", whole)).exit_code == 0
    assert_same(current(shared), current(whole))
