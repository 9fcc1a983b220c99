"""One consistent command line: repeatable methods, filters that fail loudly, configuration files
and FDPIPE_* variables, -v/--quiet anywhere, evaluate from stored maps and its CI gate, and a
torch-free --help."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from fdpipe.cli import choices, main
from image_files import write_images
from results import run_metadata, stored_rows


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("consistency") / "images"
    write_images(directory, 2)
    return directory


@pytest.fixture(scope="module")
def maps(images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("maps") / "out"
    result = invoke(explain(images, output, "--method", "gradcam", "--method", "layercam"))
    assert result.exit_code == 0, result.output
    return output


def invoke(args: list[str], **kwargs: object) -> Result:
    return CliRunner().invoke(main, args, **kwargs)  # type: ignore[arg-type]


def explain(images: Path, output: Path, *extra: str) -> list[str]:
    return [
        "explain", "-i", str(images), "-o", str(output), "--model", "squeezenet1_1",
        "--no-progress", *extra,
    ]  # fmt: skip


def params(output: Path) -> dict:
    return run_metadata(output)["params"]  # type: ignore[return-value]


def test_repeated_method_keeps_both(maps: Path) -> None:
    assert set(stored_rows(maps)["method"].to_pylist()) == {"gradcam", "layercam"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "typo"], "method 'typo' is not in"),
        (["--method", "gradcam,typo"], "it holds gradcam, layercam"),
        (["--image", "nowhere/*"], "no image of"),
        (["--rank", "3"], "no class rank 3"),
    ],
)
def test_render_filters_that_match_nothing_fail(
    maps: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    result = invoke(["render", str(maps), "-o", str(tmp_path / "png"), *extra])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "png").exists()


def test_render_takes_output_and_repeated_methods(maps: Path, tmp_path: Path) -> None:
    args = ["render", str(maps), "-o", str(tmp_path / "png"), "--method", "gradcam"]
    result = invoke([*args, "--method", "layercam", "--image", "img_000*"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "png").glob("img_000.*.png"))) == 2


EVALUATE = ["--no-progress", "--step-fraction", "0.5", "--overlays", "0"]


def test_evaluate_maps_takes_the_model_from_the_output(maps: Path, tmp_path: Path) -> None:
    result = invoke(["evaluate", "--maps", str(maps), "-o", str(tmp_path / "r"), *EVALUATE])
    assert result.exit_code == 0, result.output
    assert "| `gradcam` |" in (tmp_path / "r" / "report.md").read_text()
    other = invoke(
        ["evaluate", "--maps", str(maps), "-o", str(tmp_path / "x"), "--layer", "features.9"]
    )
    assert other.exit_code == 2
    assert "another model setup (layer: 'features.12' here 'features.9'" in other.output
    typo = invoke(["evaluate", "--maps", str(maps), "-o", str(tmp_path / "y"), "--method", "nope"])
    assert typo.exit_code == 2


def test_evaluate_fail_under_gates(maps: Path, tmp_path: Path) -> None:
    base = ["evaluate", "--maps", str(maps), "--method", "gradcam", *EVALUATE]
    passed = invoke([*base, "-o", str(tmp_path / "a"), "--fail-under", "overall=-1"])
    assert passed.exit_code == 0, passed.output
    failed = invoke([*base, "-o", str(tmp_path / "b"), "--fail-under", "insertion=1.5"])
    assert failed.exit_code == 1
    assert "gradcam: insertion" in failed.output and "< 1.5" in failed.output
    assert (tmp_path / "b" / "report.md").exists()  # the report is written either way
    wrong = invoke([*base, "-o", str(tmp_path / "c"), "--fail-under", "deletion=0.1"])
    assert wrong.exit_code == 2 and "gate deletion through overall" in wrong.output


def test_config_file_and_environment(images: Path, tmp_path: Path) -> None:
    config = tmp_path / "job.toml"
    config.write_text(
        f'model = "squeezenet1_1"\n[explain]\ninput = "{images}"\nmethod = ["gradcam", '
        '"xgradcam"]\ntop_k = 2\nprogress = false\n'
    )
    out = tmp_path / "out"
    for args in (["--config", str(config), "explain", "-o", str(out)],
                 ["explain", "-o", str(out), "--config", str(config)]):  # fmt: skip
        result = invoke(args, env={"FDPIPE_EXPLAIN_CLASSES": "1,2"})
        assert result.exit_code == 0, result.output
        assert params(out)["methods"] == {"gradcam": {}, "xgradcam": {}}
        assert params(out)["classes"] == [1, 2]  # the variable wins over the file's top_k
    flag_wins = invoke(
        ["--config", str(config), "explain", "-o", str(tmp_path / "o2"), "--classes", "3"],
        env={"FDPIPE_EXPLAIN_CLASSES": "1,2"},
    )
    assert flag_wins.exit_code == 0 and params(tmp_path / "o2")["classes"] == [3]
    env_only = invoke(
        ["explain", "-i", str(images), "-o", str(tmp_path / "o3"), "--no-progress"],
        env={"FDPIPE_EXPLAIN_MODEL": "squeezenet1_1", "FDPIPE_EXPLAIN_METHOD": "layercam"},
    )
    assert env_only.exit_code == 0, env_only.output
    assert params(tmp_path / "o3")["methods"] == {"layercam": {}}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[explain]\nbatch_sise = 4\n", "explain has no option 'batch_sise'"),
        ("[explian]\n", "no command 'explian'"),
        ("colour = 1\n", "no command has an option 'colour'"),
        ("[explain\n", "job.toml"),
        ("[explain]\ntop_k = [1, 2]\n", "explain.top_k: takes one value, not a list"),
        ("[explain.method]\nx = 1\n", "explain.method: expected a value, not a table"),
    ],
)
def test_config_mistakes_are_usage_errors(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "job.toml").write_text(text)
    result = invoke(["--config", str(tmp_path / "job.toml"), "explain", "--help"])
    assert result.exit_code == 2
    assert "Invalid value for '--config'" in result.output and message in result.output


def test_config_that_is_not_a_file_is_refused_without_reading(tmp_path: Path) -> None:
    import os

    os.mkfifo(tmp_path / "fifo")  # reading it would block forever
    result = invoke(["--config", str(tmp_path / "fifo"), "explain", "--help"])
    assert result.exit_code == 2 and "is not a regular file" in result.output


def test_config_lists_become_what_the_option_takes(images: Path, tmp_path: Path) -> None:
    (tmp_path / "job.toml").write_text(
        f'[explain]\ninput = "{images}"\nmodel = "squeezenet1_1"\nmethod = "gradcam"\n'
        "classes = [1, 2]\nprogress = false\n"
    )
    result = invoke(["--config", str(tmp_path / "job.toml"), "explain", "-o", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert params(tmp_path / "o")["classes"] == [1, 2]
    assert params(tmp_path / "o")["methods"] == {"gradcam": {}}


@pytest.mark.parametrize(
    ("before", "after", "level"),
    [([], [], logging.INFO), (["-v"], [], logging.DEBUG), ([], ["-v"], logging.DEBUG),
     ([], ["--quiet"], logging.WARNING), (["--quiet"], ["-v"], logging.WARNING)],
)  # fmt: skip
def test_verbosity_anywhere(
    images: Path, tmp_path: Path, before: list[str], after: list[str], level: int
) -> None:
    args = [*before, *explain(images, tmp_path / "out", "--method", "gradcam"), *after]
    assert invoke(args).exit_code == 0
    assert logging.getLogger().level == level


def test_choices_match_their_sources() -> None:
    from fdpipe.backends import RUNTIMES
    from fdpipe.display import DEFAULT_COLORMAP
    from fdpipe.evaluation.pointing import POINTING_TOLERANCE, VOC_TO_IMAGENET
    from fdpipe.export.onnx import OPSET
    from fdpipe.images import MAX_PIXELS
    from fdpipe.job.config import DECODES, ENGINES
    from fdpipe.kernels import FGCAM, METHODS
    from fdpipe.kernels.precision import PRECISION_CHOICES

    assert tuple(METHODS) == choices.METHOD_NAMES
    assert tuple(m for m in METHODS if m != FGCAM.name) == choices.CAM_METHODS
    assert (choices.RUNTIMES, choices.ENGINES) == (RUNTIMES, ENGINES)
    assert choices.DECODES == DECODES
    assert (choices.OPSET, choices.POINTING_TOLERANCE) == (OPSET, POINTING_TOLERANCE)
    assert choices.MAX_PIXELS == MAX_PIXELS
    assert choices.PRECISION_CHOICES == PRECISION_CHOICES
    assert choices.DEFAULT_COLORMAP == DEFAULT_COLORMAP
    assert choices.VOC_TO_IMAGENET == VOC_TO_IMAGENET and VOC_TO_IMAGENET.exists()


def test_help_and_version_do_not_import_torch() -> None:
    code = (
        "import sys; from fdpipe.cli import main\n"
        "for args in (['--help'], ['--version'], ['explain', '--help'], ['evaluate', '--help'],"
        " ['report', '--help'], ['render', '--help']):\n"
        "    try: main(args)\n"
        "    except SystemExit: pass\n"
        "print(json.dumps(sorted(m for m in ('torch', 'pyarrow', 'numpy') if m in sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import json\n" + code], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
