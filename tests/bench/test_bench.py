"""``fdpipe bench`` plumbing: a registered suite's results become a JSON file and a table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from fdpipe import bench as bench_module
from fdpipe.cli import main
from fdpipe.cli.bench import SUITE_NAMES


def test_bench_writes_suite_json_and_table(tmp_path: Path, monkeypatch) -> None:
    seen = []

    def fake_suite(settings: bench_module.Settings) -> dict[str, object]:
        seen.append(settings)
        return {"rows": [{"model": "m", "runner": "r", "seconds_per_image": 0.25}], "extra": 1}

    monkeypatch.setitem(bench_module.SUITES, "runners", fake_suite)
    args = ["bench", "-o", str(tmp_path), "--suite", "runners", "--repeats", "2", "--threads", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert seen == [bench_module.Settings(tmp_path, repeats=2, threads=1)]
    written = json.loads((tmp_path / "runners.json").read_text())
    assert written["suite"] == "runners" and written["extra"] == 1
    assert written["machine"]["threads"] == 1
    assert "0.250" in result.output  # the table


def test_suite_names_match_the_registry() -> None:
    assert set(SUITE_NAMES) == set(bench_module.SUITES)  # the CLI lists them without torch


def test_renamed_suite_still_runs_with_a_warning(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(
        bench_module.SUITES, "runners", lambda settings: {"rows": [{"runner": "r"}]}
    )
    result = CliRunner().invoke(main, ["bench", "-o", str(tmp_path), "--suite", "engine"])
    assert result.exit_code == 0, result.output
    assert "use --suite runners" in result.output
    assert (tmp_path / "runners.json").is_file()


def test_benchmarks_start_children_without_the_command_line_module() -> None:
    sources = Path(bench_module.__file__).parent.glob("*.py")
    assert not [p.name for p in sources if "fdpipe.cli" in p.read_text()]  # `python -m fdpipe`


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("avx2 avx512f avx512_bf16", "AMD EPYC (avx512_bf16)"),
        ("avx512_bf16 amx_tile amx_bf16", "AMD EPYC (avx512_bf16, amx_bf16)"),
        ("avx avx2 fma", "AMD EPYC (no native bf16)"),
    ],
)
def test_the_cpu_is_named_with_its_native_bf16(tmp_path: Path, flags: str, expected: str) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu {flags}\n")
    assert bench_module.cpu_model(cpuinfo) == expected
