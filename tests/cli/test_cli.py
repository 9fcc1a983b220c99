"""The dataset commands end to end: exit codes, clear usage errors, options, render and demo."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner
from fdpipe.cli import main
from fdpipe.cli.explain import explain as explain_command
from fdpipe.cli.options import FdpipeGroup, method_specs
from fdpipe.demo import PHOTOS
from fdpipe.errors import FdpipeError
from fdpipe.export.onnx import ExportError
from fdpipe.export.request import ModelError
from fdpipe.job.inputs import InputError
from image_files import write_images
from PIL import Image
from results import run_metadata, stored_rows


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("cli") / "images"
    write_images(directory, 3)
    return directory


def explain(images: Path, output: Path, *extra: str) -> list[str]:
    return [
        "explain", "-i", str(images), "-o", str(output), "--model", "squeezenet1_1",
        "--no-progress", *extra,
    ]  # fmt: skip


def test_exit_code_is_zero_when_everything_worked(images: Path, tmp_path: Path) -> None:
    args = ["-v", *explain(images, tmp_path / "out", "--method", "gradcam")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "done 3, failed 0, skipped 0" in result.output
    (record,) = (tmp_path / "out" / "_runs").glob("*.json")
    assert json.loads(record.read_text())["command"] == shlex.join(["fdpipe", *args])


def test_exit_code_is_one_when_an_image_failed(images: Path, tmp_path: Path) -> None:
    broken = tmp_path / "images"
    write_images(broken, 2)
    (broken / "zero.jpg").write_bytes(b"")
    args = explain(broken, tmp_path / "out", "--method", "gradcam")
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 1
    assert "done 2, failed 1, skipped 0" in first.output
    retried = CliRunner().invoke(main, args)  # failed images are retried by default
    assert retried.exit_code == 1
    assert "done 0, failed 1, skipped 2" in retried.output
    assert "retried 1" in retried.output
    resumed = CliRunner().invoke(main, [*args, "--no-retry"])  # the failure is still there
    assert resumed.exit_code == 1
    assert "failed 0 (+1 in earlier runs), skipped 3" in resumed.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "gradcam,nope"], "unknown method 'nope'"),
        (["--classes", "5,1000"], "class index 1000 out of range: valid are 0..999"),
        (["--classes", "cat"], "unknown class 'cat'"),
        (["--model", "alexnett"], "unknown model 'alexnett'"),
        (["--layer", "features.99"], "layer 'features.99' is not a module"),
        (["--shard", "2/2"], "need 0 <= i < n"),
        pytest.param(
            ["--precision", "fp16"],
            "--precision fp16: fp16 needs a CUDA GPU",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 runs on a GPU"),
        ),
    ],
)
def test_bad_usage_exits_two_with_a_clear_message(
    images: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    result = CliRunner().invoke(main, explain(images, tmp_path / "out", *extra))
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "out").exists()


def test_options_reach_the_methods_and_the_metadata(images: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        explain(
            images, tmp_path / "out", "--method", "fdcam,gradcam", "--classes", "281,285",
            "--fd-threshold", "0.9", "--no-fd-grouping", "--fd-combination", "product",
            "--batch-size", "2", "--save-weights",
        ),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    table = stored_rows(tmp_path / "out")
    assert table.num_rows == 3 * 2 * 2
    assert set(table.column("class_index").to_pylist()) == {281, 285}
    assert all(len(w) == 512 for w in table.column("weights").to_pylist())
    record = run_metadata(tmp_path / "out")
    fdcam = record["params"]["methods"]["fdcam"]
    assert (fdcam["threshold"], fdcam["grouping"], fdcam["combination"]) == (0.9, False, "product")
    assert record["params"]["methods"]["gradcam"] == {}
    assert record["params"]["classes"] == [281, 285]
    assert record["params"]["precision"] == "fp32"  # the maps depend on it: resume checks it


def test_fd_flags_go_to_fdcam_and_an_fdcam_based_fgcam_only() -> None:
    fd, fg = {"threshold": 0.9}, {"base": "fdcam", "denoise": True}
    specs = method_specs(["gradcam,fdcam", "fgcam"], fd, fg)
    assert {spec.label: spec.options for spec in specs} == {
        "gradcam": {},
        "fdcam": {"threshold": 0.9},
        "fgcam": {"base": "fdcam", "denoise": True, "threshold": 0.9},
    }
    with pytest.raises(click.BadParameter, match="--fd-threshold applies to fdcam"):
        method_specs(["fgcam"], fd, {"base": "gradcam"})  # no spec takes it: never ignored


def test_method_specs_are_one_grammar_with_flags_as_aliases() -> None:
    (spec,) = method_specs(["fdcam:threshold=0.9,grouping=false"], {"shift": 0.3})
    assert spec.label == "fdcam:threshold=0.9,grouping=false"
    assert spec.options == {"threshold": 0.9, "grouping": False, "shift": 0.3}
    with pytest.raises(click.BadParameter, match="flag sets threshold"):
        method_specs(["fdcam:threshold=0.9"], {"threshold": 0.8})
    with pytest.raises(click.BadParameter, match="unknown method"):
        method_specs(["gradcam,typo"])
    with pytest.raises(click.BadParameter, match="given twice"):
        method_specs(["gradcam", "gradcam"])


@pytest.mark.parametrize(
    "args",
    [
        ["--fd-shift", "0.3", "--method", "fdcam,gradcam", "--base", "fdcam", "--method", "fgcam"],
        ["--method", "fdcam,gradcam", "--method", "fgcam", "--base", "fdcam", "--fd-shift", "0.3"],
    ],
)
def test_alias_flags_rewrite_the_method_specs_wherever_they_stand(args: list[str]) -> None:
    context = explain_command.make_context("explain", ["-i", "in", "-o", "out", *args])
    assert {spec.label: spec.options for spec in context.params["methods"]} == {
        "fdcam": {"shift": 0.3},
        "gradcam": {},
        "fgcam": {"base": "fdcam", "shift": 0.3},
    }


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ModelError("weights file x.pt does not fit:\n  size mismatch"), 2),
        (InputError("--shard 3/2: need 0 <= i < n"), 2),
        (ExportError("parity check failed"), 1),
    ],
)
def test_an_fdpipe_error_is_one_line_and_its_exit_code(error: FdpipeError, code: int) -> None:
    group = FdpipeGroup()

    @group.command()
    def fail() -> None:
        raise error

    result = CliRunner().invoke(group, ["fail"])
    assert result.exit_code == code
    assert result.output == f"Error: {' '.join(str(error).split())}\n"


def test_render_command(images: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "out"
    assert runner.invoke(main, explain(images, out, "--method", "gradcam,layercam")).exit_code == 0
    overlays = runner.invoke(
        main, ["render", str(out), "--to", str(tmp_path / "png"), "--method", "layercam"]
    )
    assert overlays.exit_code == 0, overlays.output
    assert len(list((tmp_path / "png").rglob("*.jpg.layercam.rank0.png"))) == 3
    assert not list((tmp_path / "png").rglob("*gradcam*"))
    sheet = runner.invoke(main, ["render", str(out), "--to", str(tmp_path / "s"), "--sheet"])
    assert sheet.exit_code == 0, sheet.output
    assert "wrote 1 PNG file(s)" in sheet.output
    viridis = runner.invoke(
        main, ["render", str(out), "--to", str(tmp_path / "v"), "--colormap", "viridis",
               "--display", "percentile=99,gamma=0.5"],
    )  # fmt: skip
    assert viridis.exit_code == 0, viridis.output


def test_demo(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["demo", "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "cat.png: Egyptian cat" in result.output
    assert "coffee.png: espresso" in result.output
    assert sorted(p.stem for p in (tmp_path / "images").iterdir()) == sorted(PHOTOS)
    sheet = Image.open(tmp_path / "sheet-0000.png")
    assert sheet.height > len(PHOTOS) * 200
    index = (tmp_path / "report" / "index.html").read_text()  # the demo ends with the report
    assert f"{len(PHOTOS):,}" in index and "fgcam" in index
    assert f"Report: {tmp_path / 'report' / 'index.html'}" in result.output
