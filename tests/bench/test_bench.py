"""``fdpipe bench`` plumbing: a registered suite's results become a JSON file and a table."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from fdpipe import bench as bench_module
from fdpipe.cli import main


def test_bench_writes_suite_json_and_table(tmp_path: Path, monkeypatch) -> None:
    seen = []

    def fake_suite(settings: bench_module.Settings) -> dict[str, object]:
        seen.append(settings)
        return {"rows": [{"model": "m", "runner": "r", "seconds_per_image": 0.25}], "extra": 1}

    monkeypatch.setitem(bench_module.SUITES, "engine", fake_suite)
    args = ["bench", "-o", str(tmp_path), "--suite", "engine", "--repeats", "2", "--threads", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert seen == [bench_module.Settings(tmp_path, repeats=2, threads=1)]
    written = json.loads((tmp_path / "engine.json").read_text())
    assert written["suite"] == "engine" and written["extra"] == 1
    assert written["machine"]["threads"] == 1
    assert "0.250" in result.output  # the table
