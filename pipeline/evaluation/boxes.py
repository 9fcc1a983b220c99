"""Ground-truth boxes for the pointing game, from Pascal VOC XML or COCO JSON.

Every box is stored as 0-based, inclusive pixel indices of the original image, so that "a pixel
of the box" means the same thing whichever format it came from.
"""

from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from fdpipe.errors import FdpipeError


class BoxFormatError(FdpipeError, ValueError):
    """An annotation file that cannot be read as VOC XML or COCO JSON; the message says why."""


@dataclass(frozen=True)
class Box:
    label: str
    x0: int  # first column, 0-based
    y0: int  # first row
    x1: int  # last column, inclusive
    y1: int  # last row, inclusive
    difficult: bool = False


@dataclass(frozen=True)
class ImageBoxes:
    file_name: str  # the image file as the annotation names it
    width: int
    height: int
    boxes: tuple[Box, ...]


def _number(node: ET.Element, tag: str, where: Path) -> float:
    text = node.findtext(tag)
    if text is None:
        raise BoxFormatError(f"{where}: <{tag}> missing")
    return float(text)


def read_voc_xml(path: str | os.PathLike[str]) -> ImageBoxes:
    """One VOC annotation; its corners are 1-based and inclusive."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise BoxFormatError(f"{path}: not valid XML ({exc})") from exc
    size = root.find("size")
    if size is None:
        raise BoxFormatError(f"{path}: <size> missing")
    boxes = []
    for obj in root.iter("object"):
        corners = obj.find("bndbox")
        if corners is None:
            raise BoxFormatError(f"{path}: an <object> without <bndbox>")
        x0, y0, x1, y1 = (
            round(_number(corners, t, path)) - 1 for t in ("xmin", "ymin", "xmax", "ymax")
        )
        label = (obj.findtext("name") or "").strip()
        difficult = (obj.findtext("difficult") or "0").strip() == "1"
        boxes.append(Box(label, x0, y0, x1, y1, difficult))
    return ImageBoxes(
        file_name=root.findtext("filename") or f"{path.stem}.jpg",
        width=int(_number(size, "width", path)),
        height=int(_number(size, "height", path)),
        boxes=tuple(boxes),
    )


def read_voc(directory: str | os.PathLike[str]) -> dict[str, ImageBoxes]:
    """All ``*.xml`` of a VOC ``Annotations`` folder (or of a VOC root that holds one)."""
    directory = Path(directory)
    if (directory / "Annotations").is_dir():
        directory = directory / "Annotations"
    files = sorted(directory.glob("*.xml"))
    if not files:
        raise BoxFormatError(f"{directory}: no VOC *.xml annotations")
    return {Path(a.file_name).stem: a for a in map(read_voc_xml, files)}


def read_coco(path: str | os.PathLike[str]) -> dict[str, ImageBoxes]:
    """COCO instances JSON; ``bbox`` is [x, y, width, height] in continuous pixel coordinates.

    A box covers every pixel its rectangle overlaps. COCO has no "difficult" flag (crowd boxes
    count as ordinary boxes).
    """
    path = Path(path)
    try:
        coco = json.loads(path.read_text())
        names = {c["id"]: c["name"] for c in coco["categories"]}
        images = {i["id"]: i for i in coco["images"]}
        per_image: dict[int, list[Box]] = {image_id: [] for image_id in images}
        for ann in coco["annotations"]:
            x, y, w, h = ann["bbox"]
            x0, y0 = math.floor(x), math.floor(y)
            x1 = max(x0, math.ceil(x + w) - 1)
            y1 = max(y0, math.ceil(y + h) - 1)
            per_image[ann["image_id"]].append(Box(names[ann["category_id"]], x0, y0, x1, y1))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise BoxFormatError(f"{path}: not a COCO instances file ({exc!r})") from exc
    return {
        Path(info["file_name"]).stem: ImageBoxes(
            info["file_name"], int(info["width"]), int(info["height"]), tuple(per_image[image_id])
        )
        for image_id, info in images.items()
    }


def read_boxes(path: str | os.PathLike[str]) -> dict[str, ImageBoxes]:
    """Boxes by image file stem: a VOC folder, one VOC ``.xml`` file, or a COCO ``.json``."""
    path = Path(path)
    if path.is_dir():
        return read_voc(path)
    if path.suffix.lower() == ".xml":
        single = read_voc_xml(path)
        return {Path(single.file_name).stem: single}
    if path.suffix.lower() == ".json":
        return read_coco(path)
    raise BoxFormatError(f"{path}: expected a VOC folder, a VOC .xml or a COCO .json file")
