"""The shared command-line front door (``fdpipe.cli.options``): configuration files and FDPIPE_*
variables (issue 19, items 9, 20, 21)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from fdpipe.cli import main
from fdpipe.export.request import ModelError
from fdpipe.export.weights import offline
from image_files import write_images
from results import commit_versions, run_metadata


def invoke(args: list[str], **kwargs: object) -> Result:
    return CliRunner().invoke(main, args, **kwargs)  # type: ignore[arg-type]


def params(output: Path) -> dict:
    return run_metadata(output)["params"]  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
        ("", False),
    ],
)
def test_offline_variable_takes_documented_booleans(
    text: str, value: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FDPIPE_OFFLINE", text)
    assert offline() is value


def test_offline_variable_refuses_other_spellings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``FDPIPE_OFFLINE=banana`` once meant online and downloaded weights (item 20)."""
    monkeypatch.setenv("FDPIPE_OFFLINE", "banana")
    with pytest.raises(ModelError, match="FDPIPE_OFFLINE"):
        offline()
    write_images(tmp_path / "images", 1)
    args = ["explain", "-i", str(tmp_path / "images"), "-o", str(tmp_path / "out"), "--model",
            "resnet18", "--no-progress"]  # fmt: skip
    result = invoke(args, env={"FDPIPE_OFFLINE": "banana"})
    assert result.exit_code == 2, result.output
    assert "FDPIPE_OFFLINE='banana'" in result.output and "1, true, yes, on" in result.output
    assert "Traceback" not in result.output


def test_unknown_fdpipe_variables_are_warned_about() -> None:
    result = invoke(
        ["explain", "--help"], env={"FDPIPE_EXPLAIN_BATCHSIZE": "8", "FDPIPE_OFLINE": "1"}
    )
    assert result.exit_code == 0
    assert "unknown variable FDPIPE_EXPLAIN_BATCHSIZE" in result.output
    assert "unknown variable FDPIPE_OFLINE" in result.output
    known = invoke(["explain", "--help"], env={"FDPIPE_EXPLAIN_BATCH_SIZE": "8"})
    assert "unknown variable" not in known.output


def test_a_shared_key_whose_option_name_differs_from_its_parameter(tmp_path: Path) -> None:
    """``method`` at the top of a config file is ``--method`` (parameter ``methods``) of explain,
    render and evaluate (item 21)."""
    write_images(tmp_path / "images", 1)
    config = tmp_path / "job.toml"
    config.write_text('model = "squeezenet1_1"\nmethod = "gradcam"\n')
    out = tmp_path / "out"
    args = ["--config", str(config), "explain", "-i", str(tmp_path / "images"), "-o", str(out),
            "--no-progress"]  # fmt: skip
    result = invoke(args)
    assert result.exit_code == 0, result.output
    assert params(out)["methods"] == {"gradcam": {}}


def test_config_paths_resolve_against_the_file_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same --config works from any directory (item 9)."""
    job = tmp_path / "job"
    write_images(job / "images", 1)
    (job / "classes.txt").write_text("\n".join(f"c{i}" for i in range(1000)) + "\n")
    (job / "nightly.toml").write_text(
        'model = "squeezenet1_1"\n[explain]\ninput = "images"\noutput = "out"\n'
        'summary = "last.json"\nclass_names = "classes.txt"\nmethod = ["gradcam"]\n'
        "progress = false\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = invoke(["--config", str(job / "nightly.toml"), "explain"])
    assert result.exit_code == 0, result.output
    assert json.loads((job / "last.json").read_text())["status"] == "complete"
    assert commit_versions(job / "out") and not list(elsewhere.iterdir())
    flag = invoke(["--config", str(job / "nightly.toml"), "explain", "-o", "here"])
    assert flag.exit_code == 0 and commit_versions(elsewhere / "here")  # the line's own


def test_one_mean_or_std_value_is_broadcast_to_every_channel(tmp_path: Path) -> None:
    """``--mean 0.498`` was refused after the model loaded (issue 19, item 8)."""
    write_images(tmp_path / "images", 1)
    args = ["explain", "-i", str(tmp_path / "images"), "-o", str(tmp_path / "out"), "--model",
            "squeezenet1_1", "--method", "gradcam", "--no-progress", "--mean", "0.498",
            "--std", "0.25"]  # fmt: skip
    result = invoke(args)
    assert result.exit_code == 0, result.output
    preprocess = params(tmp_path / "out")["preprocess"]
    assert preprocess["mean"] == pytest.approx([0.498] * 3)
    assert preprocess["std"] == pytest.approx([0.25] * 3)


# Whether a refused command line got as far as importing torch (seconds of start-up).
REFUSED = """
import sys
from fdpipe.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    print(exc.code, "torch" in sys.modules)
"""


@pytest.mark.parametrize("values", ["0.1,0.2", "nan", "0.1,0.2,0.3,0.4"])
def test_bad_mean_values_are_refused_before_torch_loads(tmp_path: Path, values: str) -> None:
    args = ["explain", "-i", str(tmp_path), "-o", str(tmp_path / "out"), "--mean", values]
    done = subprocess.run(
        [sys.executable, "-c", REFUSED, *args], capture_output=True, text=True, timeout=120
    )
    assert done.stdout.split() == ["2", "False"], done.stdout + done.stderr
    assert "--mean" in done.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--layer", ""], "--layer"),
        (["--resolution", "input"], "--resolution applies to fgcam"),
        (["--fd-threshold", "0.9"], "--fd-threshold applies to fdcam"),
    ],
)
def test_options_that_would_be_silently_ignored_are_refused(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    """Issue 19, "also seen": ``--resolution`` without FG-CAM, ``--layer ""``."""
    args = ["explain", "-i", str(tmp_path), "-o", str(tmp_path / "out"), "--model",
            "squeezenet1_1", "--method", "gradcam", *extra]  # fmt: skip
    result = invoke(args)
    assert result.exit_code == 2 and message in result.output, result.output
