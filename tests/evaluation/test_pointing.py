"""Pointing game and box readers against hand-made boxes and maps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fdpipe.evaluation.boxes import (
    Box,
    BoxFormatError,
    ImageBoxes,
    read_boxes,
    read_coco,
    read_voc_xml,
)
from fdpipe.evaluation.pointing import (
    VOC_TO_IMAGENET,
    PointingGame,
    best_mapped_class,
    is_hit,
    load_class_map,
    map_peak,
    pointing_targets,
)

BOX = Box("bus", x0=10, y0=20, x1=30, y1=40)

VOC_XML = """<annotation>
  <filename>000042.jpg</filename>
  <size><width>80</width><height>60</height><depth>3</depth></size>
  <object><name>bus</name><difficult>0</difficult>
    <bndbox><xmin>11</xmin><ymin>21</ymin><xmax>31</xmax><ymax>41</ymax></bndbox></object>
  <object><name>dog</name><difficult>1</difficult>
    <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>
</annotation>
"""


@pytest.mark.parametrize(
    ("point", "hit"),
    [
        ((30, 20), True),  # inside
        ((20, 10), True),  # on the corner pixel
        ((30, 44), True),  # 14 px right of the box
        ((30, 45), False),  # exactly 15 px: not closer than 15
        ((5, 20), False),  # 15 px above
        ((50, 40), True),  # diagonal: 10^2 + 10^2 = 200 < 225
        ((51, 41), False),  # 11^2 + 11^2 = 242
    ],
)
def test_hit_means_a_box_pixel_closer_than_15_px(point: tuple[int, int], hit: bool) -> None:
    assert is_hit(point, [BOX]) is hit


def test_any_box_of_the_class_counts() -> None:
    far = Box("bus", x0=100, y0=100, x1=110, y1=110)
    assert is_hit((105, 105), [BOX, far])
    assert not is_hit((70, 70), [BOX, far])
    assert is_hit((30, 45), [BOX], tolerance=16)


def test_map_peak_is_taken_on_the_map_resized_to_the_original_image() -> None:
    native = torch.zeros(4, 4)
    native[1, 2] = 1.0
    # Bilinear x10 rows, x20 columns: the cell centre lands at 14.5 and 49.5; ties go first.
    assert map_peak(native, (40, 80)) == (14, 49)
    assert map_peak(native, (4, 4)) == (1, 2)


def test_all_difficult_classes_are_skipped_and_difficult_boxes_still_count() -> None:
    annotation = ImageBoxes(
        "x.jpg",
        100,
        100,
        (
            Box("dog", 0, 0, 9, 9, difficult=True),
            Box("bus", 50, 50, 60, 60, difficult=True),
            Box("bus", 0, 90, 5, 99),
        ),
    )
    targets = pointing_targets(annotation)
    assert set(targets) == {"bus"}
    assert len(targets["bus"]) == 2  # the difficult bus box is ground truth too
    assert is_hit((55, 55), targets["bus"])


def test_accuracy_is_per_class_then_averaged() -> None:
    game = PointingGame()
    assert game.record("bus", (30, 20), [BOX])
    assert game.record("bus", (25, 25), [BOX])
    assert not game.record("bus", (90, 90), [BOX])
    assert not game.record("dog", (90, 90), [BOX])
    assert game.accuracy_per_class() == {"bus": pytest.approx(2 / 3), "dog": 0.0}
    assert game.mean_accuracy() == pytest.approx(1 / 3)  # not 2 hits / 4 trials


def test_voc_corners_are_one_based_inclusive(tmp_path: Path) -> None:
    (tmp_path / "Annotations").mkdir()
    xml = tmp_path / "Annotations" / "000042.xml"
    xml.write_text(VOC_XML)
    annotation = read_voc_xml(xml)
    assert (annotation.file_name, annotation.width, annotation.height) == ("000042.jpg", 80, 60)
    assert annotation.boxes[0] == BOX
    assert annotation.boxes[1] == Box("dog", 0, 0, 4, 4, difficult=True)
    assert read_boxes(tmp_path) == {"000042": annotation}  # a VOC root finds its Annotations


def test_coco_boxes_cover_every_pixel_they_overlap(tmp_path: Path) -> None:
    coco = {
        "images": [{"id": 7, "file_name": "a/b.jpg", "width": 64, "height": 48}],
        "categories": [{"id": 6, "name": "bus"}],
        "annotations": [{"image_id": 7, "category_id": 6, "bbox": [10.5, 20, 5, 4.2]}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco))
    boxes = read_coco(path)
    assert boxes["b"].boxes == (Box("bus", x0=10, y0=20, x1=15, y1=24),)
    assert read_boxes(path) == boxes
    path.write_text("{}")
    with pytest.raises(BoxFormatError, match="not a COCO"):
        read_boxes(path)


def test_class_map_fits_the_model_and_picks_the_highest_logit(squeezenet, tmp_path: Path) -> None:
    class_map = load_class_map(VOC_TO_IMAGENET, squeezenet.class_names)
    assert len(class_map) == 20
    assert set(class_map["bus"]) == {654, 779, 874}
    logits = torch.zeros(1000)
    logits[779] = 2.0
    logits[874] = 3.0
    assert best_mapped_class(logits, class_map["bus"]) == 874
    typo = {"classes": {"bus": {"school bus": 780}}}
    (tmp_path / "map.json").write_text(json.dumps(typo))
    with pytest.raises(ValueError, match="is 'schooner'"):
        load_class_map(tmp_path / "map.json", squeezenet.class_names)
