"""``fdpipe explain`` on each source: a bucket of a real S3 server (SeaweedFS on loopback),
WebDataset shards and a Parquet image table give the rows and maps of the same files in a local
directory; reruns after adding, changing and deleting objects do the local incremental work; a
SIGKILL then a rerun equals an uninterrupted run; bad URLs and remote outputs exit 2."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner, Result
from fdpipe.bench.datasets import image_files, image_table, write_image_table, write_shards
from fdpipe.bench.object_store import SeaweedFS, upload
from fdpipe.cli import main
from fdpipe.job.reader import iter_rows
from image_files import explain_command, write_images

KEY = [("image_sha256", "ascending"), ("class_rank", "ascending")]
SAME = ["image_sha256", "class_index", "status", "map", "map_height", "original_width"]


def invoke(args: list[str]) -> Result:
    return CliRunner().invoke(main, args)


def command(source: str | Path, output: Path, *extra: str) -> list[str]:
    """The job tests' small run (``explain_command``) with any ``-i`` text, URLs included."""
    args = explain_command(Path("."), output, *extra)
    args[args.index("-i") + 1] = str(source)
    return args


def current(output: Path) -> pa.Table:
    return pa.Table.from_batches(list(iter_rows(output)))


def counts(output: Path) -> dict:
    import json

    record = max((output / "_runs").glob("*.json"))
    return json.loads(record.read_text())["counts"]


def local_and_bucket(tmp_path: Path, store: SeaweedFS, count: int) -> tuple[Path, str]:
    images = tmp_path / "images"
    write_images(images, count)
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    bucket = store.new_bucket()
    upload(store.filesystem(), images, f"{bucket}/images")
    return images, f"s3://{bucket}/images/"


def test_bucket_rows_equal_local_rows_and_reruns_match(tmp_path: Path, s3_env: SeaweedFS) -> None:
    images, url = local_and_bucket(tmp_path, s3_env, 5)
    runs = {"local": (str(images), tmp_path / "local"), "s3": (url, tmp_path / "s3")}
    for source, output in runs.values():
        result = invoke(command(source, output))
        assert result.exit_code == 1, result.output  # the broken file fails
    local, remote = current(tmp_path / "local"), current(tmp_path / "s3")
    assert (
        local.sort_by([("image_path", "ascending")])
        .select(["image_path", *SAME])
        .equals(remote.sort_by([("image_path", "ascending")]).select(["image_path", *SAME]))
    )
    assert remote["file_size"].null_count == 0  # the store's change token is stored

    # add one, change one (same size would do: the ETag moves), delete one, on both sides
    store, bucket_images = s3_env.filesystem(), url.removeprefix("s3://").rstrip("/")
    extra = tmp_path / "extra"
    write_images(extra, 7)
    new, changed = extra / "img_006.jpg", extra / "img_004.jpg"
    for put, remove in (
        (lambda src, name: (images / name).write_bytes(src.read_bytes()),
         lambda name: (images / name).unlink()),
        (lambda src, name: store.put_file(str(src), f"{bucket_images}/{name}"),
         lambda name: store.rm(f"{bucket_images}/{name}")),
    ):  # fmt: skip
        put(new, "img_006.jpg")
        put(changed, "img_000.jpg")
        remove("img_001.jpg")
    for source, output in runs.values():
        assert invoke(command(source, output, "--prune")).exit_code == 1
    assert counts(tmp_path / "local") == counts(tmp_path / "s3")
    assert counts(tmp_path / "s3")["new"] == 1 and counts(tmp_path / "s3")["changed"] == 1
    assert counts(tmp_path / "s3")["pruned"] == 1
    local, remote = current(tmp_path / "local"), current(tmp_path / "s3")
    assert (
        local.sort_by(KEY)
        .select(["image_path", *SAME])
        .equals(remote.sort_by(KEY).select(["image_path", *SAME]))
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-i", "ftp://host/images/"], "fdpipe cannot read ftp://"),
        (["-i", "hf://datasets/x"], "fdpipe cannot read hf://"),
        (["-o", "https://host/run/"], "the results table goes to a local folder or to"),
        (["--storage-option", "novalue"], "key=value"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    write_images(tmp_path / "images", 1)
    line = command(tmp_path / "images", tmp_path / "out")
    for flag, value in zip(args[::2], args[1::2], strict=True):
        if flag in line:
            line[line.index(flag) + 1] = value
        else:
            line += [flag, value]
    result = invoke(line)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_sigkill_then_rerun_from_a_bucket(tmp_path: Path, s3_env: SeaweedFS) -> None:
    url = local_and_bucket(tmp_path, s3_env, 8)[1]
    outputs = {}
    for name in ("killed", "uninterrupted"):
        output = tmp_path / name
        args = command(url, output)
        if name == "killed":
            code = "import sys; from fdpipe.cli import main; sys.exit(main())"
            process = subprocess.Popen(
                [sys.executable, "-c", code, *args], stderr=subprocess.DEVNULL
            )
            deadline = time.monotonic() + 600  # a ceiling for a loaded machine, not a timing
            while not list(output.glob("_delta_log/*.json")) and process.poll() is None:
                assert time.monotonic() < deadline, "no commit appeared"
                time.sleep(0.005)
            process.send_signal(signal.SIGKILL)
            assert process.wait() == -signal.SIGKILL, "the run finished before it was killed"
        assert invoke(args).exit_code == 1
        outputs[name] = current(output).sort_by(KEY)
    killed, uninterrupted = outputs["killed"], outputs["uninterrupted"]
    assert killed.select(["image_path", "image_sha256", "status"]).equals(
        uninterrupted.select(["image_path", "image_sha256", "status"])
    )
    for a, b in zip(killed["map"].to_pylist(), uninterrupted["map"].to_pylist(), strict=True):
        assert (a is None and b is None) or np.allclose(a, b, atol=1e-6)


def maps_by_sha(output: Path) -> dict[str, list[float]]:
    rows = current(output).select(["image_sha256", "map", "status"]).to_pylist()
    return {r["image_sha256"]: r["map"] for r in rows if r["status"] == "ok"}


def test_shards_and_table_give_the_maps_of_the_files(tmp_path: Path) -> None:
    images = tmp_path / "images"
    write_images(images, 5)
    files = image_files(images)
    labels = [281, 967, 281, 967, 281]
    write_shards(files, tmp_path / "shards", per_shard=2, labels=labels)
    table = write_image_table(image_table(files, labels), tmp_path / "t.parquet", 2)
    shards = str(tmp_path / "shards" / "train-{000000..000002}.tar")
    runs = {"local": str(images), "shards": shards, "table": str(table)}
    for name, source in runs.items():
        assert invoke(command(source, tmp_path / name)).exit_code == 0
    local = maps_by_sha(tmp_path / "local")
    assert len(local) == 5
    assert maps_by_sha(tmp_path / "shards") == local == maps_by_sha(tmp_path / "table")
    keys = sorted(current(tmp_path / "shards")["image_path"].to_pylist())
    assert keys[:2] == ["train-000000.tar/img_000", "train-000000.tar/img_001"]
    assert sorted(current(tmp_path / "table")["image_path"].to_pylist()) == [f for f, _ in files]

    # the class from .cls, a .json key, a table column: the target, as --target-column does
    for name, source, column in (("cls", shards, "cls"), ("json", shards, "label"),
                                 ("column", str(table), "label")):  # fmt: skip
        result = invoke(command(source, tmp_path / name, "--target-column", column))
        assert result.exit_code == 0, result.output
        assert sorted(current(tmp_path / name)["class_index"].to_pylist()) == sorted(labels)


def test_a_shard_belongs_to_one_fdpipe_shard(tmp_path: Path) -> None:
    images = tmp_path / "images"
    write_images(images, 8)
    write_shards(image_files(images), tmp_path / "shards", per_shard=2)
    pattern = str(tmp_path / "shards" / "train-{000000..000003}.tar")
    seen: dict[str, int] = {}
    for index in range(2):
        invoke(command(pattern, tmp_path / "out", "--shard", f"{index}/2"))
    for row in current(tmp_path / "out").to_pylist():
        shard = row["image_path"].split("/")[0]
        assert seen.setdefault(shard, row["run_id"]) == row["run_id"]
    assert len(seen) == 4 and len(set(seen.values())) == 2  # both fdpipe shards got shards


def test_a_url_in_a_config_file_stays_a_url(tmp_path: Path) -> None:
    """Relative paths of a --config file resolve beside it; a URL is left as it is."""
    config = tmp_path / "job.toml"
    config.write_text('[explain]\ninput = "ftp://host/images/"\noutput = "out"\n')
    result = invoke(["--config", str(config), "explain", "--model", "squeezenet1_1"])
    assert result.exit_code == 2 and "ftp://host/images/: fdpipe cannot read" in result.output


@pytest.mark.parametrize("case", ["no credentials", "unreachable"])
@pytest.mark.parametrize("kind", ["prefix", "shards", "table"])
def test_a_store_that_cannot_be_read_is_one_line(
    tmp_path: Path,
    s3_env: SeaweedFS,
    aws_env_only: None,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    kind: str,
) -> None:
    """botocore's errors (no credentials, no connection) are no OSError: each is one line,
    exit 2, before any work, for each kind of remote input."""
    from fdpipe.bench.object_store import free_ports
    from s3fs import S3FileSystem

    S3FileSystem.clear_instance_cache()  # as a new process: none made with earlier credentials
    if case == "no credentials":
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    else:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_ports(1)[0]}")
    source = {"prefix": "s3://bucket/images/", "shards": "s3://bucket/s-{0..1}.tar",
              "table": "s3://bucket/t.parquet"}[kind]  # fmt: skip
    result = invoke(command(source, tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    expected = "no credentials found" if case == "no credentials" else "Could not connect"
    assert expected in result.output.strip().splitlines()[-1]
