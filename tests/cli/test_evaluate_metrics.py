"""``fdpipe evaluate`` with every metric, the statistics, --choose, --sample and the sanity
check on the real SqueezeNet; bad options are one-line errors before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from fdpipe.cli import main


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, photos) -> Path:  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("images")
    for name in ("cat", "coffee", "rocket"):
        photos[name].save(folder / f"{name}.png")
    return folder


def test_every_metric_with_intervals_the_cascade_and_a_recommendation(
    images: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    result = CliRunner().invoke(
        main,
        [
            "evaluate", "-i", str(images), "-o", str(out), "--model", "squeezenet1_1",
            "--method", "gradcam,fdcam:scoring=off", "--metric", "all", "--sample", "2",
            "--road-fractions", "0.5", "--step-fraction", "0.25", "--sanity", "2",
            "--sanity-images", "1", "--choose", "--no-progress", "--overlays", "0",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "recommended: " in result.output and "best by overall: " in result.output
    results = json.loads((out / "results.json").read_text())
    assert len({row["image"] for row in results["images"]}) == 2  # the sample
    for metric in ("insertion", "overall", "road", "road_morf", "average_drop", "increase"):
        stats = results["statistics"][metric]
        assert stats["units"] == 2
        for interval in stats["means"].values():
            assert interval["low"] <= interval["mean"] <= interval["high"]
        assert set(stats["wilcoxon_p"]["gradcam"]) == {"fdcam:scoring=off"}
    assert results["verdict"] == results["statistics"]["overall"]["verdict"]["line"]
    row = results["images"][0]
    assert len(row["road_morf_curve"]) == 1 and len(row["insertion_curve"]) == 5
    sanity = results["sanity"]
    assert sanity["steps"] == ["classifier.1", "features.12"]
    assert len(sanity["rank"]["gradcam"]) == 2 and len(sanity["rank"]["gradcam"][0]) == 1
    page = (out / "report.html").read_text()
    assert "cascading model randomisation" in page and '<img src="cascade.png"' in page
    assert "95 % bootstrap interval" in page and (out / "cascade.png").is_file()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--metric", "curves,nope"], "unknown nope"),
        (["--road-fractions", "0.5,1.5"], "fractions in (0, 1)"),
        (["--road-fractions", "nan"], "fractions in (0, 1)"),
        (["--road-noise", "-1"], "--road-noise"),
        (["--road-noise", "nan"], "not a finite number"),
        (["--sample", "0"], "--sample"),
        (["--sanity-stop", "nan"], "not a finite number"),
        (["--sanity-stop", "2"], "--sanity-stop"),
        (["--maps", "."], "--sanity re-runs the methods"),
        (["--sanity", "0", "--sanity-stop", "0.5"], "need --sanity N"),  # else silently ignored
        (["--sanity", "0", "--sanity-images", "2"], "need --sanity N"),
    ],
)
def test_bad_options_exit_2_with_one_line(
    images: Path, tmp_path: Path, options: list[str], message: str
) -> None:
    base = ["evaluate", "-o", str(tmp_path / "r"), "--model", "squeezenet1_1", "--sanity", "1"]
    source = [] if "--maps" in options else ["-i", str(images)]
    result = CliRunner().invoke(main, [*base, *source, *options])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()
