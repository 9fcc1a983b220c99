"""``evaluate --maps``: an output is data (issue 19, item 11). A model source that runs code (a
factory, a ``file.py:factory``, a TorchScript archive, a pickle) named in an output's metadata is
never imported unless the user names the same source on the command line."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from fdpipe.cli import main
from fdpipe.job.table import COMMIT_KEY
from image_files import explain_command, write_images


def test_a_code_source_named_by_an_output_is_never_run(tmp_path: Path) -> None:
    images, output = tmp_path / "images", tmp_path / "out"
    write_images(images, 2)
    assert CliRunner().invoke(main, explain_command(images, output)).exit_code == 0
    marker = tmp_path / "ran"
    evil = tmp_path / "evil3.py"
    evil.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nbuild = None\n")
    for log in (output / "_delta_log").glob("*.json"):  # a tampered output: each commit's record
        actions = [json.loads(line) for line in log.read_text().splitlines()]
        for action in actions:
            info = action.get("commitInfo", {})
            if COMMIT_KEY in info:
                metadata = json.loads(info[COMMIT_KEY])
                metadata["params"]["model"] = metadata["params"]["source"] = f"{evil}:build"
                info[COMMIT_KEY] = json.dumps(metadata)
        log.write_text("".join(json.dumps(action) + "\n" for action in actions))
    args = ["evaluate", "--maps", str(output), "-i", str(images), "-o", str(tmp_path / "ev"),
            "--no-curves"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert not marker.exists()
    assert "runs code" in result.output and f"--model {evil}:build" in result.output
    named = CliRunner().invoke(main, [*args, "--model", f"{evil}:build"])
    assert marker.exists() and named.exit_code == 2  # the user's choice; its module is no model
