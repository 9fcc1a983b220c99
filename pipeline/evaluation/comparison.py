"""The method comparison behind ``fdpipe evaluate``.

Maps come from the methods themselves (computed on the fly, each method spec a row of the report)
or from an ``explain`` output. Each image is scored for the class the model predicts on it by
insertion / deletion, Average Drop / Increase in Confidence and ROAD (as asked), and, where it
has ground-truth boxes, by the pointing game and its energy-based variant.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from fdpipe.api import Explainer
from fdpipe.evaluation.boxes import ImageBoxes
from fdpipe.evaluation.confidence import confidence_change
from fdpipe.evaluation.curves import CurveProtocol, insertion_deletion
from fdpipe.evaluation.energy import energy_pointing
from fdpipe.evaluation.pointing import (
    POINTING_TOLERANCE,
    ClassMap,
    PointingGame,
    best_mapped_class,
    is_hit,
    map_peak,
    pointing_targets,
)
from fdpipe.evaluation.road import ROADProtocol, road_scores
from fdpipe.export.loading import LoadedModel
from fdpipe.images import ImageDecodeError, load_image_sized
from fdpipe.job.inputs import Entry, EntryError, Source
from fdpipe.job.reader import MapRow
from fdpipe.kernels import SplitNetwork
from fdpipe.kernels.postprocess import upsample_map
from PIL import Image
from torch import Tensor
from tqdm import tqdm

# What `--metric` chooses; the pointing games come with ground-truth boxes.
METRIC_FAMILIES = ("curves", "confidence", "road")
# Per-image values, in report order.
IMAGE_METRICS = (
    "insertion", "deletion", "overall", "average_drop", "increase",
    "road_morf", "road_lerf", "road",
)  # fmt: skip
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
    class_index: int  # predicted on the clean image; its score is what the metrics track
    class_name: str
    values: dict[str, float] = field(default_factory=dict)  # metric -> value (IMAGE_METRICS)
    curves: dict[str, list[float]] = field(default_factory=dict)  # insertion, deletion, road_*

    def row(self) -> dict[str, object]:
        """The JSON row: identity, every value, every curve as ``<name>_curve``."""
        head = {"image": self.image, "method": self.method, "class_index": self.class_index}
        curves = {f"{name}_curve": curve for name, curve in self.curves.items()}
        return head | {"class_name": self.class_name} | self.values | curves


@dataclass
class PointingTrial:
    image: str
    method: str
    dataset_class: str
    model_class: int  # the mapped model class with the highest logit
    point: tuple[int, int]  # (row, column) in the original image
    hit: bool
    energy: float  # the share of the map's energy inside the class's boxes


@dataclass
class Comparison:
    methods: list[str]
    protocol: CurveProtocol
    tolerance: float = POINTING_TOLERANCE
    metrics: tuple[str, ...] = ("curves",)  # of METRIC_FAMILIES
    road: ROADProtocol = field(default_factory=ROADProtocol)
    scores: list[ImageScores] = field(default_factory=list)
    trials: list[PointingTrial] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # image -> reason
    unmapped: Counter[str] = field(default_factory=Counter)  # dataset classes without a mapping

    def games(self) -> dict[str, PointingGame]:
        games = {label: PointingGame(self.tolerance) for label in self.methods}
        for trial in self.trials:
            games[trial.method].add(trial.dataset_class, trial.hit)
        return games

    def values(self) -> dict[str, dict[str, dict[str, float]]]:
        """{metric: {method: {unit: value}}}: units are images, or (image, dataset class)
        trials for the pointing games; the paired statistics work from this."""
        values: dict[str, dict[str, dict[str, float]]] = {}
        for s in self.scores:
            for metric, value in s.values.items():
                values.setdefault(metric, {}).setdefault(s.method, {})[s.image] = value
        for t in self.trials:
            unit = f"{t.image}#{t.dataset_class}"
            values.setdefault("pointing", {}).setdefault(t.method, {})[unit] = float(t.hit)
            values.setdefault("energy", {}).setdefault(t.method, {})[unit] = t.energy
        return values

    def summary(self) -> dict[str, dict[str, float]]:
        """Per method: the mean of every image metric; pointing accuracy (per class, then over
        classes) and the mean energy share where the pointing game was played."""
        games = self.games()
        rows = {}
        for label in self.methods:
            mine = [s for s in self.scores if s.method == label]
            row: dict[str, float] = {"images": len(mine)}
            for metric in IMAGE_METRICS:
                found = [s.values[metric] for s in mine if metric in s.values]
                if found:
                    row[metric] = float(np.mean(found))
            if games[label].trials:
                row["pointing"] = games[label].mean_accuracy()
                row["pointing_trials"] = sum(games[label].trials.values())
                energies = [t.energy for t in self.trials if t.method == label]
                row["energy"] = (
                    float(np.nanmean(energies)) if any(map(math.isfinite, energies)) else math.nan
                )
            rows[label] = row
        return rows

    def mean_curves(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per method: the (insertion, deletion) curves averaged over images."""
        curves = {}
        for label in self.methods:
            mine = [s for s in self.scores if s.method == label and "insertion" in s.curves]
            if mine:
                curves[label] = (
                    np.mean([s.curves["insertion"] for s in mine], axis=0),
                    np.mean([s.curves["deletion"] for s in mine], axis=0),
                )
        return curves


def _score_chunk(
    comparison: Comparison,
    network: SplitNetwork,
    keys: list[str],
    inputs: Tensor,
    logits: Tensor,
    maps: list[dict[str, Tensor]],
    class_names: Sequence[str],
) -> None:
    """Every metric of ``comparison.metrics`` for a chunk of images at once: the perturbed
    inputs of every image and method share the forward passes, the clean pass is ``logits``."""
    labels = [label for label in comparison.methods if any(label in m for m in maps)]
    if not labels:
        return
    size = (inputs.shape[-2], inputs.shape[-1])
    blank = torch.zeros(size, device=inputs.device)
    saliency = torch.stack(
        [
            torch.stack(
                [upsample_map(m[label].float(), size) if label in m else blank for label in labels]
            )
            for m in maps
        ]
    ).to(inputs.device)
    tops = logits.argmax(1)
    values: dict[str, Tensor] = {}
    curves: dict[str, Tensor] = {}
    if "curves" in comparison.metrics:
        result = insertion_deletion(network, inputs, saliency, comparison.protocol, logits)
        curves["insertion"], curves["deletion"] = result.insertion, result.deletion
        values["insertion"], values["deletion"] = result.insertion_auc, result.deletion_auc
        values["overall"] = result.overall
    if "confidence" in comparison.metrics:
        change = confidence_change(
            network, inputs, saliency, logits, comparison.protocol.score,
            comparison.protocol.batch_size,
        )  # fmt: skip
        values["average_drop"], values["increase"] = change.drop, change.increase
    if "road" in comparison.metrics:
        for order in ("morf", "lerf"):
            scores = road_scores(network, inputs, saliency, tops, order, comparison.road)
            curves[f"road_{order}"], values[f"road_{order}"] = scores, scores.mean(-1)
        values["road"] = (values["road_lerf"] - values["road_morf"]) / 2
    for b, key in enumerate(keys):
        for j, label in enumerate(labels):
            if label not in maps[b]:
                continue
            top = int(tops[b])
            comparison.scores.append(
                ImageScores(
                    image=key,
                    method=label,
                    class_index=top,
                    class_name=class_names[top],
                    values={name: float(v[b, j]) for name, v in values.items()},
                    curves={name: c[b, j].tolist() for name, c in curves.items()},
                )
            )


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
            energy = energy_pointing(native.float(), size, targets[dataset_class], box)
            comparison.trials.append(
                PointingTrial(key, label, dataset_class, model_class, point, hit, energy)
            )


def compare(
    model: LoadedModel,
    network: SplitNetwork,
    source: MapSource,
    images: Sequence[Entry],
    image_source: Source,
    *,
    protocol: CurveProtocol | None = None,
    metrics: Sequence[str] = ("curves",),
    road: ROADProtocol | None = None,
    chunk: int = 8,
    boxes: dict[str, ImageBoxes] | None = None,
    class_map: ClassMap | None = None,
    tolerance: float = POINTING_TOLERANCE,
    on_maps: MapsCallback | None = None,
    progress: bool = False,
) -> Comparison:
    """``metrics`` (of METRIC_FAMILIES) of every image, ``chunk`` images scored together; the
    pointing games where ``boxes`` has the image.

    ``images`` are read through ``image_source``; ``boxes`` is keyed by image file stem;
    ``on_maps`` sees each image's maps for its top class.
    """
    unknown = set(metrics) - set(METRIC_FAMILIES)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}: choose from {METRIC_FAMILIES}")
    comparison = Comparison(
        source.labels,
        protocol or CurveProtocol(),
        tolerance,
        tuple(metrics),
        road or ROADProtocol(),
    )
    device = next(network.parameters(), torch.empty(0)).device  # perturbations run there too
    bar = tqdm(total=len(images), desc="evaluate", unit="image", disable=not progress)
    for start in range(0, len(images), chunk):
        pictures: list[tuple[str, Image.Image]] = []
        for item in images[start : start + chunk]:
            try:
                pictures.append((item.key, load_image_sized(image_source.open(item))[0]))
            except (EntryError, ImageDecodeError, OSError) as exc:
                comparison.skipped[item.key] = str(exc)
        bar.update(len(images[start : start + chunk]))
        if not pictures:
            continue
        inputs = torch.stack([model.preprocess(p) for _, p in pictures]).to(device)
        with torch.no_grad():
            logits = network(inputs)  # the clean pass, once for every metric
        keys, chunk_maps = [], []
        for b, (key, picture) in enumerate(pictures):
            top = int(logits[b].argmax())
            if comparison.metrics:
                found = source.maps(key, inputs[b : b + 1], [top])
                present = {label: m[0] for label, m in found.items() if m[0] is not None}
                if not present:
                    comparison.skipped[key] = f"no map for the predicted class {top}"
                else:
                    keys.append(key)
                    chunk_maps.append(present)
                    if on_maps is not None:
                        on_maps(key, picture, top, float(logits[b].softmax(0)[top]), present)
            annotation = (boxes or {}).get(Path(key).stem)
            if annotation is not None:
                if class_map is None:
                    raise ValueError("the pointing game needs a class map")
                _play_pointing(
                    comparison, source, key, inputs[b : b + 1], logits[b], annotation,
                    class_map, model.preprocess.crop_box,
                )  # fmt: skip
        if keys:
            index = [next(b for b, (k, _) in enumerate(pictures) if k == key) for key in keys]
            _score_chunk(
                comparison, network, keys, inputs[index], logits[index], chunk_maps,
                model.class_names,
            )  # fmt: skip
    bar.close()
    return comparison
