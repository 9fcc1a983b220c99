"""``explain --evaluate-sample N``: a seeded sample of the run's images scored with the maps the
run just computed, the means with intervals in the run record and the report; hostile values."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from fdpipe.api import Explainer
from fdpipe.cli import main
from fdpipe.evaluation.comparison import StoredMaps, compare
from fdpipe.evaluation.curves import CurveProtocol
from fdpipe.export.request import ModelRequest, PreprocessOptions
from fdpipe.job.config import ConfigError, JobConfig
from fdpipe.job.inputs import FileSource
from fdpipe.job.reader import select_rows
from fdpipe.job.run import run_job
from fdpipe.report import write_site
from image_files import write_images

# SqueezeNet at 64 px: the curves' ~57 forward passes per image and method stay cheap.
MODEL = ModelRequest("squeezenet1_1", preprocess=PreprocessOptions(size=(64, 64)))


def records(output: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((output / "_runs").glob("*.json"))]


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> JobConfig:
    images = tmp_path_factory.mktemp("night") / "images"
    write_images(images, 4)
    (images / "broken.jpg").write_bytes(b"not a jpeg")  # fails: in a sample of every image
    config = JobConfig(
        input=images, output=images.parent / "out", model=MODEL, methods=("gradcam", "fdcam"),
        batch_size=2, part_size=2, workers=1, progress=False, evaluate_sample=50,
    )  # fmt: skip
    summary = run_job(config)
    assert (summary.done, summary.failed) == (4, 1)
    return config


def test_the_sample_is_scored_with_the_maps_just_computed(night: JobConfig) -> None:
    (record,) = records(night.output)
    evaluation = record["evaluation"]
    assert (evaluation["asked"], evaluation["seed"], evaluation["eligible"]) == (50, 0, 5)
    assert len(evaluation["images"]) == 5 and evaluation["evaluated"] == 4  # N > images: all
    assert evaluation["skipped"] == {
        "broken.jpg": evaluation["skipped"]["broken.jpg"]
    } and evaluation["skipped"]["broken.jpg"].startswith("failed in this run:")
    # the same figures as `fdpipe evaluate --maps` on the stored maps of the same images
    stored = StoredMaps(select_rows(night.output))
    model = MODEL.load()
    network = Explainer(model, []).network
    source = FileSource(Path(night.input))
    entries = [e for e in source.entries() if e.key in evaluation["images"]]
    again = compare(model, network, stored, entries, source, protocol=CurveProtocol(),
                    metrics=("curves", "confidence"))  # fmt: skip
    for metric in ("insertion", "deletion", "average_drop"):
        for method in ("gradcam", "fdcam"):
            mine = evaluation["means"][metric][method]
            values = [s.values[metric] for s in again.scores if s.method == method]
            assert mine["mean"] == pytest.approx(sum(values) / len(values), abs=1e-6)
            assert mine["low"] <= mine["mean"] <= mine["high"]
    assert evaluation["verdict"].startswith("best by overall:")


def test_the_report_shows_each_runs_sample(night: JobConfig, tmp_path: Path) -> None:
    runs = night.output / "_runs"
    (runs / "20000101T000000000000Z-aaaaaa.json").write_text(
        json.dumps({"run_id": "tampered", "evaluation": {"means": {"insertion": [1, 2]}}})
    )  # a record is data: a wrong shape is shown as missing
    write_site(night.output, tmp_path / "site", images_root=Path(night.input))
    page = (tmp_path / "site" / "index.html").read_text()
    assert "Faithfulness of a sample, run by run" in page
    (record,) = [r for r in records(night.output) if "means" in r.get("evaluation", {})
                 and r["run_id"] != "tampered"]  # fmt: skip
    mean = record["evaluation"]["means"]["insertion"]["fdcam"]
    assert f"{mean['mean']:.3f} [{mean['low']:.3f}, {mean['high']:.3f}]" in page
    assert "<td>tampered</td>" in page


def test_the_sample_is_seeded(night: JobConfig, tmp_path: Path) -> None:
    first = replace(night, output=tmp_path / "a", evaluate_sample=2, methods=("gradcam",))
    run_job(first)
    run_job(replace(first, output=tmp_path / "b"))
    a, b = (records(p)[0]["evaluation"] for p in (tmp_path / "a", tmp_path / "b"))
    assert a["images"] == b["images"] and len(a["images"]) == 2 and a["seed"] == 0
    assert a["means"] == b["means"]
    rerun = run_job(replace(first, retry=False))  # nothing new tonight: nothing to sample
    empty = records(tmp_path / "a")[1]["evaluation"]
    assert rerun.done == 0 and (empty["images"], empty["evaluated"], empty["means"]) == ([], 0, {})


@pytest.mark.parametrize("value", [-1, 1.5, math.nan, True, "3"])
def test_bad_sample_sizes_are_refused(value: object, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="evaluate_sample"):
        JobConfig(input=tmp_path, output=tmp_path / "out", evaluate_sample=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["0", "-2", "nan", "1.5", ""])
def test_bad_sample_sizes_on_the_command_line_exit_two(value: str, tmp_path: Path) -> None:
    write_images(tmp_path / "images", 1)
    args = ["explain", "-i", str(tmp_path / "images"), "-o", str(tmp_path / "out"),
            "--evaluate-sample", value]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "--evaluate-sample" in result.output
    assert not (tmp_path / "out").exists()  # refused before any work
