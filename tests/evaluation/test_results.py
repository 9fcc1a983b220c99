"""Method specs, the Table I layout, and ``fdpipe evaluate`` end to end (live and stored maps)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from fdpipe.cli import main
from fdpipe.evaluation.results import OverlayWriter, markdown_table
from fdpipe.kernels import FDCAM
from fdpipe.methods import MethodSpec, split_method_specs
from fdpipe.render import LABEL, TILE
from PIL import Image

CAT_XML = """<annotation><filename>cat.png</filename>
  <size><width>451</width><height>300</height><depth>3</depth></size>
  <object><name>cat</name><difficult>0</difficult>
    <bndbox><xmin>60</xmin><ymin>1</ymin><xmax>451</xmax><ymax>300</ymax></bndbox></object>
  <object><name>dog</name><difficult>1</difficult>
    <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>20</xmax><ymax>20</ymax></bndbox></object>
  <object><name>unicorn</name><difficult>0</difficult>
    <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>20</xmax><ymax>20</ymax></bndbox></object>
</annotation>
"""


def test_method_specs_become_make_method_options() -> None:
    texts = split_method_specs("fdcam, fdcam:grouping=false,scoring=off,gradcam,fdcam:shift=1")
    assert texts == ["fdcam", "fdcam:grouping=false,scoring=off", "gradcam", "fdcam:shift=1"]
    spec = MethodSpec.parse(texts[1])
    assert (spec.label, spec.name, spec.options) == (
        texts[1],
        "fdcam",
        {"grouping": False, "scoring": "off"},
    )
    method = spec.build()
    assert isinstance(method, FDCAM)
    assert method.options()["grouping"] is False and method.options()["scoring"] == "off"
    assert MethodSpec.parse("fdcam:threshold=0.9,shift=1").options == {"threshold": 0.9, "shift": 1}
    with pytest.raises(ValueError, match="not key=value"):
        MethodSpec.parse("fdcam:grouping")
    with pytest.raises(ValueError, match="bad options"):
        MethodSpec.parse("gradcam:threshold=0.9").build()


def test_table_one_layout_with_the_best_in_bold() -> None:
    summary = {
        "a": {"insertion": 0.5, "deletion": 0.10, "overall": 0.40, "pointing": 0.8},
        "b": {"insertion": 0.6, "deletion": 0.10, "overall": 0.50, "pointing": 0.75},
        "c": {"insertion": 0.4, "deletion": 0.2, "overall": 0.2},
    }
    lines = markdown_table(summary).splitlines()
    assert lines[0] == "| Method | Insertion ↑ | Deletion ↓ | Overall ↑ | Pointing game ↑ |"
    assert lines[2] == "| `a` | 0.5000 | **0.1000** | 0.4000 | **80.00%** |"
    assert lines[3] == "| `b` | **0.6000** | **0.1000** | **0.5000** | 75.00% |"  # tie: both bold
    assert lines[4] == "| `c` | 0.4000 | 0.2000 | 0.2000 | – |"
    assert "Pointing" not in markdown_table(
        {"a": {"insertion": 0.5, "deletion": 0.1, "overall": 0.4}}
    )


def test_evaluate_live_and_from_an_explain_output(tmp_path: Path, photos) -> None:
    images = tmp_path / "images"
    images.mkdir()
    photos["cat"].save(images / "cat.png")
    (tmp_path / "cat.xml").write_text(CAT_XML)
    runner = CliRunner()
    common = ["--model", "squeezenet1_1", "--boxes", str(tmp_path / "cat.xml"), "--no-progress"]
    live = runner.invoke(
        main,
        [
            "evaluate",
            "-i",
            str(images),
            "-o",
            str(tmp_path / "live"),
            "--method",
            "gradcam,fdcam:grouping=false,scoring=off",
            *common,
        ],
    )
    assert live.exit_code == 0, live.output
    report = tmp_path / "live"
    assert "| `gradcam` |" in (report / "report.md").read_text()
    assert (report / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert Image.open(report / "overlays" / "cat.png").width == 3 * 224
    page = (report / "report.html").read_text()  # the same report as HTML
    assert "<td><code>gradcam</code></td>" in page and page.count("<b>") >= 3  # best in bold
    assert '<img src="curves.png"' in page and '<img src="overlays/cat.png"' in page
    results = json.loads((report / "results.json").read_text())
    assert results["methods"] == ["gradcam", "fdcam:grouping=false,scoring=off"]
    scores = {s["method"]: s for s in results["images"]}
    assert len(scores["gradcam"]["deletion_curve"]) == 29
    assert scores["gradcam"]["class_index"] in range(281, 286)  # a cat
    trials = results["pointing_trials"]
    assert {t["dataset_class"] for t in trials} == {"cat"}  # dog: all difficult; unicorn: unmapped
    # The top-1 class is a cat class, so it is also the highest-logit class mapped to VOC 'cat'.
    assert all(t["hit"] and t["model_class"] == scores["gradcam"]["class_index"] for t in trials)
    assert results["unmapped_classes"] == {"unicorn": 1}
    assert results["summary"]["gradcam"]["pointing"] == 1.0

    explained = runner.invoke(
        main,
        [
            "explain",
            "-i",
            str(images),
            "-o",
            str(tmp_path / "maps"),
            "--model",
            "squeezenet1_1",
            "--method",
            "gradcam",
            "--no-progress",
        ],
    )
    assert explained.exit_code == 0, explained.output
    stored = runner.invoke(
        main,
        ["evaluate", "--maps", str(tmp_path / "maps"), "-o", str(tmp_path / "stored"), *common],
    )
    assert stored.exit_code == 0, stored.output
    again = json.loads((tmp_path / "stored" / "results.json").read_text())
    assert again["methods"] == ["gradcam"]
    (from_maps,) = again["images"]
    for key in ("insertion", "deletion"):
        assert from_maps[key] == pytest.approx(scores["gradcam"][key], abs=1e-5)
    assert again["pointing_trials"][0]["point"] == trials[0]["point"]


def test_overlays_place_a_crop_map_in_the_box_the_model_saw(tmp_path: Path) -> None:
    """#19 item 1: evaluate's overlays stretched a cropped map over the whole photo."""
    picture = Image.new("RGB", (448, 224), (128, 128, 128))  # a cell shows it 224 x 112
    writer = OverlayWriter(
        tmp_path, ["zero", "one"], 1, crop_box=lambda w, h: (w / 4, 0.0, 3 * w / 4, float(h))
    )
    maps = {"gradcam": torch.rand(7, 7, generator=torch.Generator().manual_seed(0))}
    writer("cat.png", picture, 1, 0.9, maps)
    (path,) = writer.written
    sheet = np.asarray(Image.open(path).convert("RGB")).astype(int)
    cell = sheet[LABEL + 56 : LABEL + 168, TILE : 2 * TILE]  # the overlay, label and padding off
    assert (cell[:, :54] == 128).all() and (cell[:, 170:] == 128).all()  # outside: the photo
    assert np.abs(cell[:, 60:164] - 128).mean() > 20  # the map covers the box (x 56..168)
