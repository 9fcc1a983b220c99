"""Hostile inputs and faults (issue 12): nothing deleted, nothing hung, nothing silently wrong.

One test per reproduction: the hostile input, then the wanted behaviour (a failed row, a
one-line exit 2 before any work, or a refusal that leaves every file in place).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import fdpipe
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from fdpipe.cli import main
from fdpipe.export.loading import load_model
from fdpipe.export.onnx import (
    MANIFEST,
    ArtifactMismatch,
    ExportTargetError,
    Manifest,
    artifact,
    check_export_target,
    load_manifest,
)
from fdpipe.export.request import ModelError
from fdpipe.export.runners import OnnxRunner
from fdpipe.images import ImageDecodeError, load_image_sized
from fdpipe.job.config import ConfigError, JobConfig
from fdpipe.job.decode import decode
from fdpipe.job.inputs import Entry, FileSource, InputError, read_manifest
from fdpipe.job.lock import output_lock
from fdpipe.job.run import run_job
from fdpipe.job.sources import open_source
from fdpipe.kernels.fdcam import FDCAMOptions
from image_files import write_images
from manifests import make_manifest
from PIL import Image
from results import commit_versions, data_files, stored_rows
from test_bad_inputs import png_header_only

QUICK = ("--model", "squeezenet1_1", "--method", "gradcam", "--no-progress", "--workers", "1")


def explain(images: Path, output: Path, *extra: str) -> list[str]:
    return ["explain", "-i", str(images), "-o", str(output), *QUICK, *extra]


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback is a failure of the test, not an exit code
    return result.exit_code, result.output


def table(output: Path) -> list[dict]:
    return stored_rows(output).to_pylist()


@pytest.fixture
def images(tmp_path: Path) -> Path:
    write_images(tmp_path / "images", 3)
    return tmp_path / "images"


# ---- data loss and silent corruption -----------------------------------------------------------


def test_export_never_replaces_a_directory_of_other_files(tmp_path: Path) -> None:
    target = tmp_path / "d"
    (target / "sub").mkdir(parents=True)
    (target / "keep.txt").write_text("t")
    code, output = invoke("export", "--model", "squeezenet1_1", "-o", str(target))
    assert code == 2 and "not an fdpipe export" in output and "keep.txt" in output
    assert (target / "keep.txt").read_text() == "t" and (target / "sub").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportTargetError, match="not a directory"):
        check_export_target(tmp_path / "file")


def test_export_replaces_an_earlier_export_or_an_empty_directory(tmp_path: Path) -> None:
    check_export_target(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    check_export_target(tmp_path / "empty")
    earlier = fake_export(tmp_path / "earlier")
    check_export_target(earlier)
    (earlier / "notes.txt").write_text("mine")  # a file the export did not write
    with pytest.raises(ExportTargetError, match=r"notes\.txt"):
        check_export_target(earlier)


def fake_export(directory: Path) -> Path:
    directory.mkdir()
    graph = directory / "backbone.onnx"
    graph.write_bytes(bytes(range(256)) * 4)
    entry = {"sha256": hashlib.sha256(graph.read_bytes()).hexdigest(), "bytes": 1024}
    manifest = make_manifest(files={"backbone.onnx": entry})
    (directory / MANIFEST).write_text(json.dumps(manifest.to_json()))
    return directory


def test_a_modified_artifact_of_the_same_size_is_refused(tmp_path: Path) -> None:
    directory = fake_export(tmp_path / "art")
    manifest = Manifest.from_json(json.loads((directory / MANIFEST).read_text()))
    assert artifact(directory, manifest, "backbone.onnx").is_file()
    graph = directory / "backbone.onnx"
    data = bytearray(graph.read_bytes())
    data[100] ^= 0x80  # a flipped sign bit: same size, other weights
    graph.write_bytes(bytes(data))
    os.utime(graph, ns=(1, 1))  # a new mtime: the per-process cache must not hide the change
    with pytest.raises(ArtifactMismatch, match="sha256"):
        artifact(directory, manifest, "backbone.onnx")


@pytest.mark.parametrize("content", [b"", b"{not json", b"\xff\xfe", b"[1, 2]", b'{"files": 3}'])
def test_a_malformed_manifest_is_an_artifact_error(
    tmp_path: Path, squeezenet: object, content: bytes
) -> None:
    (tmp_path / MANIFEST).write_bytes(content)
    with pytest.raises(ArtifactMismatch):
        load_manifest(tmp_path, squeezenet)  # type: ignore[arg-type]


def test_an_undecodable_graph_is_an_artifact_error(tmp_path: Path, images: Path) -> None:
    (tmp_path / "bad.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(ArtifactMismatch, match="cannot be loaded"):
        OnnxRunner(tmp_path / "bad.onnx").session  # noqa: B018
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / MANIFEST).write_text("{")
    code, output = invoke(*explain(images, tmp_path / "out", "--artifacts", str(tmp_path / "art")))
    assert code == 2 and "not a valid manifest" in output


def test_a_second_run_on_the_same_output_and_shard_is_refused(images: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    with output_lock(output, (0, 1)):
        code, message = invoke(*explain(images, output))
        assert code == 2 and "another fdpipe run holds" in message
        with (
            output_lock(output, (1, 2)),  # other shards run side by side
            pytest.raises(ConfigError, match="another fdpipe run holds"),
            output_lock(output, (1, 2)),
        ):
            pass
    assert not commit_versions(output)  # the refused run wrote nothing
    code, _ = invoke(*explain(images, output))
    assert code == 0 and len(table(output)) == 3


def test_a_sigkilled_run_leaves_no_stuck_lock(tmp_path: Path) -> None:
    holder = (
        "import sys, time; from fdpipe.job.lock import output_lock\n"
        "with output_lock(sys.argv[1], (0, 1)):\n    print('held', flush=True); time.sleep(60)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", holder, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline() == "held\n"
    with pytest.raises(ConfigError, match=f"pid {process.pid}"), output_lock(tmp_path, (0, 1)):
        pass
    process.send_signal(signal.SIGKILL)
    process.wait()
    with output_lock(tmp_path, (0, 1)):  # the kernel released it with the process
        pass


@pytest.mark.parametrize(
    "bad",
    [["--fd-shift", "nan"], ["--fd-shift", "inf"], ["--fd-threshold", "-1"],
     ["--fd-threshold", "2"], ["--fd-threshold", "nan"], ["--method", "fdcam:threshold=2"],
     ["--method", "fdcam:shift=nan"], ["--method", "fdcam:combination=sum"], ["--top-k", "2000"],
     ["--classes", ","], ["--classes", ""], ["--classes", "1,1"], ["--method", "fgcam",
     "--resolution", "junk"], ["--max-pixels", "0"]],
)  # fmt: skip
def test_bad_numbers_and_options_exit_2_before_any_work(
    images: Path, tmp_path: Path, bad: list[str]
) -> None:
    args = explain(images, tmp_path / "out")
    args[args.index("--method") : args.index("--method") + 2] = []  # the bad one chooses
    code, output = invoke(*args, *(["--method", "fdcam"] if "--method" not in bad else []), *bad)
    assert code == 2, output
    assert not commit_versions(tmp_path / "out")


def test_method_options_are_refused_the_same_way_by_the_api() -> None:
    for options in ({"threshold": float("nan")}, {"threshold": -0.1}, {"shift": float("inf")}):
        with pytest.raises(ValueError, match="fdcam"):
            FDCAMOptions(**options)  # type: ignore[arg-type]


def test_evaluate_refuses_bad_method_options(images: Path, tmp_path: Path) -> None:
    code, output = invoke("evaluate", "-i", str(images), "-o", str(tmp_path / "eval"),
                          "--model", "squeezenet1_1", "--method", "fdcam:threshold=2")  # fmt: skip
    assert code == 2 and "threshold" in output


def test_a_map_that_breaks_the_contract_is_a_failed_row(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fdpipe.job import rows

    real = rows.explain_batch

    def poisoned(*args: object, **kwargs: object) -> list[rows.HostExplanation]:
        explained = real(*args, **kwargs)  # type: ignore[arg-type]
        for host in explained:
            host.native[0] = np.nan  # the first image of each batch
            host.native[1] = 1.5  # the second one: outside [0, 1]
        return explained

    monkeypatch.setattr(rows, "explain_batch", poisoned)
    summary = run_job(JobConfig(input=images, output=tmp_path / "out", model="squeezenet1_1",
                                methods=("gradcam",), batch_size=3))  # fmt: skip
    assert (summary.done, summary.failed) == (1, 2)
    by_path = {row["image_path"]: row for row in table(tmp_path / "out")}
    assert "non-finite" in by_path["img_000.jpg"]["error"]
    assert "outside [0, 1]" in by_path["img_001.jpg"]["error"]
    assert by_path["nested/img_002.jpg"]["status"] == "ok"


def test_render_writes_one_file_per_row_even_for_look_alike_names(tmp_path: Path) -> None:
    source = tmp_path / "images"
    write_images(source, 1)
    picture = Image.open(source / "img_000.jpg")
    (source / "a").mkdir()
    for name in ("pic.jpg", "pic.png", "a/b.jpg", "a__b.jpg"):
        picture.save(source / name)
    (source / "img_000.jpg").unlink()
    assert invoke(*explain(source, tmp_path / "out"))[0] == 0
    code, output = invoke("render", str(tmp_path / "out"), "--to", str(tmp_path / "png"))
    assert code == 0 and "wrote 4 PNG" in output
    written = sorted(
        p.relative_to(tmp_path / "png").as_posix() for p in (tmp_path / "png").rglob("*.png")
    )
    assert written == ["a/b.jpg.gradcam.rank0.png", "a__b.jpg.gradcam.rank0.png",
                       "pic.jpg.gradcam.rank0.png", "pic.png.gradcam.rank0.png"]  # fmt: skip


# ---- whole-run crashes and hangs ---------------------------------------------------------------


def test_a_file_name_that_is_not_utf8_is_stored_losslessly(images: Path, tmp_path: Path) -> None:
    odd = os.fsencode(images) + b"/latin1-\xe9.jpg"
    with open(odd, "wb") as fh:
        fh.write((images / "img_000.jpg").read_bytes())
    config = JobConfig(input=images, output=tmp_path / "out", model="squeezenet1_1",
                       methods=("gradcam",))  # fmt: skip
    assert run_job(config).done == 4
    paths = {row["image_path"]: row for row in table(config.output)}
    assert paths["latin1-\\xe9.jpg"]["status"] == "ok"
    assert paths["latin1-\\xe9.jpg"]["image_sha256"] == paths["img_000.jpg"]["image_sha256"]
    assert run_job(config).skipped == 4  # and every rerun resumes


def test_a_file_name_that_is_not_utf8_is_found_by_every_reader(
    images: Path, tmp_path: Path
) -> None:
    """Issue 19 item 16: the ``\\xNN`` form of a name is turned back into its bytes by render,
    the report, ``evaluate --maps`` and ``fdpipe.image_file``."""
    real = os.fsencode(images) + b"/latin1-\xe9.jpg"
    with open(real, "wb") as fh:
        fh.write((images / "img_000.jpg").read_bytes())
    out, key = tmp_path / "out", "latin1-\\xe9.jpg"
    assert invoke(*explain(images, out))[0] == 0
    assert os.fsencode(fdpipe.image_file(out, key)) == real
    code, said = invoke("render", str(out), "-o", str(tmp_path / "png"))
    assert code == 0 and (tmp_path / "png" / f"{key}.gradcam.rank0.png").is_file(), said
    code, said = invoke("evaluate", "--maps", str(out), "-o", str(tmp_path / "ev"),
                        "--no-progress", "--no-curves", "--overlays", "0")  # fmt: skip
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert code == 0 and key in {row["image"] for row in results["images"]}, said
    code, said = invoke("report", str(out), "-o", str(tmp_path / "site"))
    assert code == 0 and "not found" not in said, said
    # a real name holding a backslash and those characters is the one found where both exist
    (images / key).write_bytes(b"")
    assert fdpipe.image_file(out, key) == images / key


def test_a_list_entry_that_climbs_out_of_its_folder_is_not_read(
    images: Path, tmp_path: Path
) -> None:
    """Issue 19, also seen: an input lives under the input directory or the list's folder, or
    is named by an absolute path; a relative ``../`` entry is a failed row, never read."""
    secret = tmp_path / "secret.jpg"
    secret.write_bytes((images / "img_000.jpg").read_bytes())
    listed = images / "todo.txt"
    listed.write_text(f"img_000.jpg\n../secret.jpg\nnested/../img_001.jpg\n{secret}\n")
    code, said = invoke(*explain(listed, tmp_path / "out"))
    assert code == 1, said  # some images failed
    rows = {row["image_path"]: row for row in table(tmp_path / "out")}
    assert (
        rows["../secret.jpg"]["status"] == "failed"
        and rows["../secret.jpg"]["image_sha256"] is None
    )
    assert "climbs out of the list's folder" in rows["../secret.jpg"]["error"]
    assert {rows[k]["status"] for k in ("img_000.jpg", "nested/../img_001.jpg", str(secret))} == {
        "ok"
    }


def test_fifos_and_devices_are_failed_rows_not_hangs(images: Path, tmp_path: Path) -> None:
    os.mkfifo(images / "b.jpg")
    (images / "z.jpg").symlink_to("/dev/zero")
    code = "import sys; from fdpipe.cli import main; sys.exit(main())"
    args = explain(images, tmp_path / "out")
    done = subprocess.run([sys.executable, "-c", code, *args], timeout=120, capture_output=True)
    assert done.returncode == 1, done.stderr.decode()  # 1: some images failed
    rows = {row["image_path"]: row for row in table(tmp_path / "out")}
    assert len(rows) == 5
    for name in ("b.jpg", "z.jpg"):
        assert rows[name]["status"] == "failed" and "not a regular file" in rows[name]["error"]


def test_files_above_the_size_bound_are_not_read(images: Path) -> None:
    item = Entry("img_000.jpg", str(images / "img_000.jpg"))
    preprocess = load_model("squeezenet1_1", pretrained=False).preprocess
    decoded = decode(item, FileSource(images), preprocess, max_bytes=100)
    assert decoded.error is not None and "file too large" in decoded.error
    assert decoded.info.sha256 is None  # refused before hashing


def test_a_symlink_loop_is_walked_once(images: Path) -> None:
    (images / "loop").symlink_to(".")
    (images / "nested" / "up").symlink_to("..")
    (images / "twin").symlink_to("nested")
    keys = [entry.key for entry in open_source(images).entries()]
    assert keys == ["img_000.jpg", "img_001.jpg", "nested/img_002.jpg"]


def test_a_truncated_part_is_named_and_its_images_redone(
    images: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    output = tmp_path / "out"
    args = explain(images, output, "--part-size", "1", "--batch-size", "1")
    assert invoke(*args)[0] == 0
    fresh = sorted(table(output), key=lambda row: row["image_path"])
    broken = data_files(output)[1]
    os.truncate(broken, 100)
    code, message = invoke("render", str(output), "--to", str(tmp_path / "png"))
    assert code == 0 and "Traceback" not in message  # the others are rendered
    assert broken.name in caplog.text and "skipped" in caplog.text
    code, message = invoke(*args)
    assert code == 0 and "done 1, failed 0, skipped 2" in message
    assert (output / f".{broken.name}.unreadable").stat().st_size == 100  # kept, hidden
    resumed = sorted(table(output), key=lambda row: row["image_path"])
    assert [r["image_path"] for r in resumed] == [r["image_path"] for r in fresh]
    for a, b in zip(resumed, fresh, strict=True):
        np.testing.assert_allclose(a["map"], b["map"], atol=1e-6)


def test_render_skips_a_deleted_image_and_says_so(images: Path, tmp_path: Path) -> None:
    assert invoke(*explain(images, tmp_path / "out"))[0] == 0
    (images / "img_000.jpg").unlink()
    code, output = invoke("render", str(tmp_path / "out"), "--to", str(tmp_path / "png"))
    assert code == 1 and "wrote 2 PNG" in output and "img_000.jpg" in output


def test_render_of_a_folder_without_a_table_or_with_a_foreign_one(tmp_path: Path) -> None:
    from deltalake import write_deltalake

    (tmp_path / "empty").mkdir()
    code, output = invoke("render", str(tmp_path / "empty"), "--to", str(tmp_path / "png"))
    assert code == 2 and "holds no fdpipe results table" in output
    write_deltalake(str(tmp_path / "foreign"), pa.table({"x": [1, 2]}))
    code, output = invoke("render", str(tmp_path / "foreign"), "--to", str(tmp_path / "png"))
    assert code == 2 and "without fdpipe's run records" in output


# ---- usage errors: exit 2 before any work ------------------------------------------------------


def test_an_output_that_is_a_file_is_refused_first(images: Path, tmp_path: Path) -> None:
    (tmp_path / "out").write_text("mine")
    code, output = invoke(*explain(images, tmp_path / "out"))
    assert code == 2 and "is a file" in output
    assert (tmp_path / "out").read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_an_output_that_is_not_writable_is_refused_first(images: Path, tmp_path: Path) -> None:
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    code, output = invoke(*explain(images, tmp_path / "ro" / "out"))
    assert code == 2 and "not writable" in output


def write_weights(path: Path, kind: str) -> Path:
    class Evil:
        def __reduce__(self) -> tuple:
            return (os.system, ("echo pwned",))

    if kind == "tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(500))
    elif kind == "pickle":
        import pickle

        path.write_bytes(pickle.dumps(Evil()))
    else:
        torch.save({"features.0.weight": torch.zeros(1)}, path)
    return path


@pytest.mark.parametrize("kind", ["tensor", "garbage", "pickle", "missing keys"])
@pytest.mark.parametrize("model", ["squeezenet1_1", "vgg16"])
def test_bad_weights_are_a_model_error(tmp_path: Path, kind: str, model: str) -> None:
    path = write_weights(tmp_path / "w.pt", kind)
    with pytest.raises(ModelError, match="weights file"):
        load_model(model, weights=path)


def test_bad_weights_exit_2(images: Path, tmp_path: Path) -> None:
    path = write_weights(tmp_path / "w.pt", "garbage")
    code, output = invoke(*explain(images, tmp_path / "out", "--weights", str(path)))
    assert code == 2 and "cannot be used" in output


@pytest.mark.parametrize(
    ("name", "content"),
    [("empty.parquet", b""), ("list.txt", b"caf\xe9.jpg\n"), ("ints.parquet", None)],
)
def test_malformed_manifests_are_input_errors(
    tmp_path: Path, name: str, content: bytes | None
) -> None:
    path = tmp_path / name
    if content is None:
        pq.write_table(pa.table({"image_path": [1, 2]}), path)
    else:
        path.write_bytes(content)
    with pytest.raises(InputError, match=name):
        read_manifest(path)


def test_a_csv_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    (tmp_path / "todo.csv").write_bytes("\ufeffimage_path,label\na.jpg,1\nb.jpg,2\n".encode())
    assert read_manifest(tmp_path / "todo.csv") == ["a.jpg", "b.jpg"]


def test_a_layer_followed_by_an_in_place_op_works(images: Path, tmp_path: Path) -> None:
    code, output = invoke(*explain(images, tmp_path / "out", "--layer", "classifier.1"))
    assert code == 0, output
    assert all(row["status"] == "ok" and len(row["map"]) == 13 * 13
               for row in table(tmp_path / "out"))  # fmt: skip


def test_ctrl_c_exits_130(images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fdpipe.job import run

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "run_local", interrupted)
    assert invoke(*explain(images, tmp_path / "out"))[0] == 130


def test_overlays_rendered_into_the_input_are_not_inputs(images: Path, tmp_path: Path) -> None:
    assert invoke(*explain(images, tmp_path / "out"))[0] == 0
    code, _ = invoke("render", str(tmp_path / "out"), "--to", str(images / "overlays"))
    assert code == 0 and list((images / "overlays").glob("*.png"))
    assert len(open_source(images).entries()) == 3
    code, output = invoke("render", str(tmp_path / "out"), "--to", str(images))
    assert code == 2 and "own folder" in output


# ---- peak memory: decoded pixels per image are bounded -----------------------------------------


def test_a_tiny_file_of_80_million_pixels_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "line.png"
    path.write_bytes(png_header_only(80_000_000, 1))
    with pytest.raises(ImageDecodeError, match="image too large"):
        load_image_sized(path)


def test_a_large_jpeg_is_decoded_reduced_with_its_full_size_recorded(tmp_path: Path) -> None:
    path = tmp_path / "large.jpg"
    Image.new("RGB", (3000, 2000), (200, 30, 30)).save(path)
    picture, size = load_image_sized(path, max_pixels=1_000_000)
    assert size == (3000, 2000)
    assert picture.width * picture.height <= 1_000_000 and picture.width == 750


# ---- found by the hostile pass of the third round's second session ------------------------------


@pytest.mark.parametrize("odd", ["link", "fifo"])
def test_a_lock_file_that_is_a_link_or_fifo_is_refused(
    images: Path, tmp_path: Path, odd: str
) -> None:
    """A ``.fdpipe-lock`` linked to a file outside the output was overwritten with a pid; a FIFO
    there was a traceback."""
    out = tmp_path / "out"
    assert invoke(*explain(images, out))[0] == 0
    lock = out / ".fdpipe-lock"
    lock.unlink()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    if odd == "link":
        lock.symlink_to(victim)
    else:
        os.mkfifo(lock)
    code, said = invoke(*explain(images, out))
    assert code == 2 and ".fdpipe-lock" in said and said.count("\n") == 1, said
    assert victim.read_text() == "precious"


def test_a_runs_folder_that_is_a_link_is_not_written_through(images: Path, tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    assert invoke(*explain(images, out))[0] == 0
    (out / "_runs").rename(elsewhere)
    (out / "_runs").symlink_to(elsewhere)
    before = sorted(os.listdir(elsewhere))
    code, said = invoke(*explain(images, out))
    assert code == 2 and "is a link" in said, said
    assert sorted(os.listdir(elsewhere)) == before


def test_odd_run_records_are_named_never_read_whole(images: Path, tmp_path: Path) -> None:
    """A record linked to /dev/zero was skipped silently; a huge file was read whole (GBs)."""
    out = tmp_path / "out"
    assert invoke(*explain(images, out))[0] == 0
    runs = out / "_runs"
    (runs / "29991231T000000000000Z-000000.json").symlink_to("/dev/zero")
    with open(runs / "29991231T000000000000Z-000001.json", "wb") as fh:
        fh.truncate(64 << 20)  # sparse: 64 MiB of zeros on no disk
    code, said = invoke("status", str(out))
    assert code == 4 and "000000.json" in said and "000001.json" in said, said
    assert "larger than 16 MiB" in said


def test_a_data_file_replaced_by_a_fifo_is_set_aside_not_waited_on(
    images: Path, tmp_path: Path
) -> None:
    """``explain`` hung for ever (SIGTERM did nothing) opening it; render said "None"."""
    out = tmp_path / "out"
    assert invoke(*explain(images, out))[0] == 0
    (part,) = data_files(out)
    part.unlink()
    os.mkfifo(part)
    command = [sys.executable, "-m", "fdpipe", "render", str(out), "-o", str(tmp_path / "png")]
    done = subprocess.run(command, capture_output=True, timeout=120)
    said = done.stderr.decode() + done.stdout.decode()
    assert done.returncode == 2 and "not a regular file" in said and "None" not in said, said
    command = [sys.executable, "-m", "fdpipe", *explain(images, out)]
    done = subprocess.run(command, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert (part.parent / f".{part.name}.unreadable").exists() and len(table(out)) == 3
