"""Pointing game (METHODS.md section 4): does the map's maximum land within 15 px of the object?

One map per (image, class present). Its point is the arg-max of the map resized to the original
image. A hit is any ground-truth box pixel of that class closer than the tolerance (Euclidean,
strict). Accuracy is taken per class, then averaged over classes. A class whose boxes in an image
are all "difficult" is skipped for that image; when a class has ordinary boxes, its difficult
boxes still count as ground truth.

Dataset classes reach the model's classes through an editable JSON map
(``data/voc_to_imagenet.json`` by default). Of the model classes mapped to a dataset class, the
one with the highest logit on the image is explained: the class the model itself sees best.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fdpipe.errors import FdpipeError
from fdpipe.evaluation.boxes import Box, ImageBoxes
from fdpipe.kernels.postprocess import place_map
from torch import Tensor

POINTING_TOLERANCE = 15.0
VOC_TO_IMAGENET = Path(__file__).parent / "data" / "voc_to_imagenet.json"

ClassMap = dict[str, tuple[int, ...]]


class ClassMapError(FdpipeError, ValueError):
    """A ``--class-map`` file that cannot be read or does not fit the model's classes."""


def load_class_map(
    path: str | os.PathLike[str] = VOC_TO_IMAGENET, class_names: Sequence[str] | None = None
) -> ClassMap:
    """``{"classes": {dataset class: {model class name: index}}}``; names checked if given."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ClassMapError(f"{path}: cannot read the class map: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("classes"), dict):
        raise ClassMapError(f'{path}: expected {{"classes": {{dataset class: {{name: index}}}}}}')
    classes = document["classes"]
    for dataset_class, targets in classes.items():
        for name, index in targets.items():
            if class_names is not None and (
                not 0 <= index < len(class_names) or class_names[index] != name
            ):
                found = class_names[index] if 0 <= index < len(class_names) else "out of range"
                raise ClassMapError(
                    f"{path}: {dataset_class!r} maps {name!r} to class {index}, "
                    f"but the model's class {index} is {found!r}"
                )
    return {label: tuple(targets.values()) for label, targets in classes.items()}


def pointing_targets(annotation: ImageBoxes) -> dict[str, tuple[Box, ...]]:
    """Classes present in the image with all their boxes; all-difficult classes left out."""
    by_class: dict[str, list[Box]] = {}
    for box in annotation.boxes:
        by_class.setdefault(box.label, []).append(box)
    return {
        label: tuple(boxes)
        for label, boxes in by_class.items()
        if not all(box.difficult for box in boxes)
    }


def best_mapped_class(logits: Tensor, candidates: Sequence[int]) -> int:
    """The candidate model class with the highest logit (logits: (N,))."""
    return max(candidates, key=lambda c: float(logits[c]))


def map_peak(
    native: Tensor, size: tuple[int, int], box: tuple[float, float, float, float] | None = None
) -> tuple[int, int]:
    """(row, column) of the maximum of a (h, w) map resized to ``size`` (over ``box``, the part
    of the image the model saw, when it saw a crop); first one on ties."""
    resized = place_map(native, size, box)
    row, column = divmod(int(resized.flatten().argmax()), size[1])
    return row, column


def box_distance_squared(point: tuple[int, int], box: Box) -> int:
    """Squared Euclidean distance from the (row, column) point to the nearest pixel of ``box``."""
    row, column = point
    dy = max(box.y0 - row, 0, row - box.y1)
    dx = max(box.x0 - column, 0, column - box.x1)
    return dx * dx + dy * dy


def is_hit(
    point: tuple[int, int], boxes: Sequence[Box], tolerance: float = POINTING_TOLERANCE
) -> bool:
    return any(box_distance_squared(point, box) < tolerance**2 for box in boxes)


@dataclass
class PointingGame:
    """Hits and trials per dataset class, for one method."""

    tolerance: float = POINTING_TOLERANCE
    hits: Counter[str] = field(default_factory=Counter)
    trials: Counter[str] = field(default_factory=Counter)

    def record(self, label: str, point: tuple[int, int], boxes: Sequence[Box]) -> bool:
        hit = is_hit(point, boxes, self.tolerance)
        self.add(label, hit)
        return hit

    def add(self, label: str, hit: bool) -> None:
        self.trials[label] += 1
        self.hits[label] += hit

    def accuracy_per_class(self) -> dict[str, float]:
        return {label: self.hits[label] / n for label, n in sorted(self.trials.items())}

    def mean_accuracy(self) -> float:
        per_class = self.accuracy_per_class()
        return sum(per_class.values()) / len(per_class) if per_class else float("nan")
