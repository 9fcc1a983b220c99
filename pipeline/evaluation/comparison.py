"""The method comparison behind ``fdpipe evaluate``.

Maps come from the methods themselves (computed on the fly, each method spec a row of the report)
or from an ``explain`` output. Each image is scored by insertion / deletion for the class the model
predicts on it, and, where it has ground-truth boxes, by the pointing game.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from fdpipe.api import Explainer
from fdpipe.evaluation.boxes import ImageBoxes
from fdpipe.evaluation.curves import CurveProtocol, insertion_deletion
from fdpipe.evaluation.pointing import (
    POINTING_TOLERANCE,
    ClassMap,
    PointingGame,
    best_mapped_class,
    is_hit,
    map_peak,
    pointing_targets,
)
from fdpipe.export.loading import LoadedModel
from fdpipe.images import ImageDecodeError, load_image_sized
from fdpipe.job.inputs import Entry, EntryError, Source
from fdpipe.job.reader import MapRow
from fdpipe.kernels import SplitNetwork
from fdpipe.kernels.postprocess import upsample_map
from PIL import Image
from torch import Tensor
from tqdm import tqdm

MapsCallback = Callable[[str, Image.Image, int, float, dict[str, Tensor]], None]


class MapSource(Protocol):
    labels: list[str]

    def available(self, key: str, label: str, candidates: Sequence[int]) -> list[int]:
        """The candidate classes the method has (or can make) a map for."""
        ...

    def maps(
        self, key: str, inputs: Tensor, classes: Sequence[int]
    ) -> dict[str, list[Tensor | None]]:
        """Native (h, w) maps of every method for each class; None where there is none."""
        ...


class LiveMaps:
    """Maps computed by an ``Explainer``; all its methods share one backbone pass per image."""

    def __init__(self, explainer: Explainer) -> None:
        self.explainer = explainer
        self.labels = list(explainer.methods)

    def available(self, key: str, label: str, candidates: Sequence[int]) -> list[int]:
        return list(candidates)

    def maps(
        self, key: str, inputs: Tensor, classes: Sequence[int]
    ) -> dict[str, list[Tensor | None]]:
        state = self.explainer.prepare(inputs, classes=list(classes))
        return {
            label: list(result.native[0]) for label, result in self.explainer.explanations(state)
        }


class StoredMaps:
    """Maps of an ``explain`` output, by (image path, method, class index); held in memory."""

    def __init__(self, rows: Iterable[MapRow]) -> None:
        self.index: dict[tuple[str, str, int], np.ndarray] = {}
        labels: dict[str, None] = {}
        for row in rows:
            self.index[row.image_path, row.method, row.class_index] = row.native
            labels[row.method] = None
        self.labels = list(labels)

    @property
    def image_paths(self) -> list[str]:
        return sorted({key for key, _, _ in self.index})

    def available(self, key: str, label: str, candidates: Sequence[int]) -> list[int]:
        return [c for c in candidates if (key, label, c) in self.index]

    def maps(
        self, key: str, inputs: Tensor, classes: Sequence[int]
    ) -> dict[str, list[Tensor | None]]:
        found = {label: [self.index.get((key, label, c)) for c in classes] for label in self.labels}
        return {
            label: [None if m is None else torch.from_numpy(m) for m in per_class]
            for label, per_class in found.items()
        }


@dataclass
class ImageScores:
    image: str
    method: str
    class_index: int  # predicted on the clean image; its score is what the curves track
    insertion: float
    deletion: float
    insertion_curve: list[float]
    deletion_curve: list[float]

    @property
    def overall(self) -> float:
        return self.insertion - self.deletion


@dataclass
class PointingTrial:
    image: str
    method: str
    dataset_class: str
    model_class: int  # the mapped model class with the highest logit
    point: tuple[int, int]  # (row, column) in the original image
    hit: bool


@dataclass
class Comparison:
    methods: list[str]
    protocol: CurveProtocol
    tolerance: float = POINTING_TOLERANCE
    scores: list[ImageScores] = field(default_factory=list)
    trials: list[PointingTrial] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # image -> reason
    unmapped: Counter[str] = field(default_factory=Counter)  # dataset classes without a mapping

    def games(self) -> dict[str, PointingGame]:
        games = {label: PointingGame(self.tolerance) for label in self.methods}
        for trial in self.trials:
            games[trial.method].add(trial.dataset_class, trial.hit)
        return games

    def summary(self) -> dict[str, dict[str, float]]:
        """Per method: mean insertion, deletion and overall; pointing accuracy where played."""
        games = self.games()
        rows = {}
        for label in self.methods:
            mine = [s for s in self.scores if s.method == label]
            row: dict[str, float] = {"images": len(mine)}
            if mine:
                row["insertion"] = float(np.mean([s.insertion for s in mine]))
                row["deletion"] = float(np.mean([s.deletion for s in mine]))
                row["overall"] = row["insertion"] - row["deletion"]
            if games[label].trials:
                row["pointing"] = games[label].mean_accuracy()
                row["pointing_trials"] = sum(games[label].trials.values())
            rows[label] = row
        return rows

    def mean_curves(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per method: the (insertion, deletion) curves averaged over images."""
        curves = {}
        for label in self.methods:
            mine = [s for s in self.scores if s.method == label]
            if mine:
                curves[label] = (
                    np.mean([s.insertion_curve for s in mine], axis=0),
                    np.mean([s.deletion_curve for s in mine], axis=0),
                )
        return curves


def _score_curves(
    comparison: Comparison,
    network: SplitNetwork,
    source: MapSource,
    key: str,
    inputs: Tensor,
    top: int,
) -> dict[str, Tensor]:
    maps = source.maps(key, inputs, [top])
    present = {label: per_class[0] for label, per_class in maps.items() if per_class[0] is not None}
    if not present:
        comparison.skipped[key] = f"no map for the predicted class {top}"
        return present
    size = (inputs.shape[-2], inputs.shape[-1])
    saliency = torch.stack([upsample_map(m.float(), size) for m in present.values()])[None]
    curves = insertion_deletion(network, inputs, saliency, comparison.protocol)
    for j, label in enumerate(present):
        comparison.scores.append(
            ImageScores(
                image=key,
                method=label,
                class_index=top,
                insertion=curves.insertion_auc[0, j].item(),
                deletion=curves.deletion_auc[0, j].item(),
                insertion_curve=curves.insertion[0, j].tolist(),
                deletion_curve=curves.deletion[0, j].tolist(),
            )
        )
    return present


def _play_pointing(
    comparison: Comparison,
    source: MapSource,
    key: str,
    inputs: Tensor,
    logits: Tensor,
    annotation: ImageBoxes,
    class_map: ClassMap,
    crop_box: Callable[[int, int], tuple[float, float, float, float]],
) -> None:
    targets = pointing_targets(annotation)
    chosen: dict[str, dict[str, int]] = {}  # dataset class -> method -> model class
    for dataset_class in targets:
        if dataset_class not in class_map:
            comparison.unmapped[dataset_class] += 1
            continue
        for label in source.labels:
            candidates = source.available(key, label, class_map[dataset_class])
            if candidates:
                chosen.setdefault(dataset_class, {})[label] = best_mapped_class(logits, candidates)
    wanted = sorted({c for per_method in chosen.values() for c in per_method.values()})
    if not wanted:
        return
    maps = source.maps(key, inputs, wanted)
    size = (annotation.height, annotation.width)  # the frame the boxes are given in
    for dataset_class, per_method in chosen.items():
        for label, model_class in per_method.items():
            native = maps[label][wanted.index(model_class)]
            assert native is not None  # available() vouched for it
            box = crop_box(annotation.width, annotation.height)  # what the model saw
            point = map_peak(native.float(), size, box)
            hit = is_hit(point, targets[dataset_class], comparison.tolerance)
            comparison.trials.append(
                PointingTrial(key, label, dataset_class, model_class, point, hit)
            )


def compare(
    model: LoadedModel,
    network: SplitNetwork,
    source: MapSource,
    images: Sequence[Entry],
    image_source: Source,
    *,
    protocol: CurveProtocol | None = None,
    curves: bool = True,
    boxes: dict[str, ImageBoxes] | None = None,
    class_map: ClassMap | None = None,
    tolerance: float = POINTING_TOLERANCE,
    on_maps: MapsCallback | None = None,
    progress: bool = False,
) -> Comparison:
    """Insertion / deletion of every image (``curves``), pointing game where ``boxes`` has it.

    ``images`` are read through ``image_source``; ``boxes`` is keyed by image file stem;
    ``on_maps`` sees each image's maps for its top class.
    """
    comparison = Comparison(source.labels, protocol or CurveProtocol(), tolerance)
    device = next(network.parameters(), torch.empty(0)).device  # perturbations run there too
    for item in tqdm(images, desc="evaluate", unit="image", disable=not progress):
        try:
            picture = load_image_sized(image_source.open(item))[0]
        except (EntryError, ImageDecodeError, OSError) as exc:
            comparison.skipped[item.key] = str(exc)
            continue
        inputs = model.preprocess(picture)[None].to(device)
        with torch.no_grad():
            logits = network(inputs)[0]
        top = int(logits.argmax())
        if curves:
            present = _score_curves(comparison, network, source, item.key, inputs, top)
            if on_maps is not None and present:
                on_maps(item.key, picture, top, float(logits.softmax(0)[top]), present)
        annotation = (boxes or {}).get(Path(item.key).stem)
        if annotation is not None:
            if class_map is None:
                raise ValueError("the pointing game needs a class map")
            _play_pointing(
                comparison,
                source,
                item.key,
                inputs,
                logits,
                annotation,
                class_map,
                model.preprocess.crop_box,
            )
    return comparison
