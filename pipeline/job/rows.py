"""The rows stage: a batch of decoded images through the ``Explainer``, into Arrow columns.

Per batch: one backbone pass and every method (``explain_batch``), each ``Explanation`` copied to
the host once per tensor (``HostExplanation``; tensors the methods share, such as the classes and
logits, once per batch), the output contract checked on those copies, then the rows built column
by column (``batch_rows``): one per (image, method, class) in input order, one per image that
could not be decoded or broke the contract. Maps stay at the layer's resolution: nothing here
resizes them to the input.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from time import perf_counter

import numpy as np
import pyarrow as pa
import torch
from fdpipe.api import Explainer, Explanation
from fdpipe.export.class_names import class_indices
from fdpipe.export.request import ModelError
from fdpipe.job.contract import contract_violations
from fdpipe.job.decode import DecodedImage
from fdpipe.job.schema import SCHEMA, RunStamp
from fdpipe.kernels.state import LayerState
from torch import Tensor

Box = tuple[float, float, float, float]
HostCopies = dict[int, tuple[Tensor, np.ndarray]]  # id(tensor) -> (tensor, its host copy)
log = logging.getLogger("fdpipe.job")


@dataclass
class BatchFit:
    """The most images one pass may take: set by the first out-of-memory error of a run, so the
    rest of the run goes in slices that fitted instead of running out again on every batch."""

    limit: int | None = None


@dataclass(frozen=True)
class RowFormat:
    """What every row of a run carries besides its image: set up once (``fdpipe.job.setup``)."""

    model: str
    layer: str
    class_names: Sequence[str]
    stamp: RunStamp
    crop_box: Callable[[int, int], Box] | None = None  # (width, height) -> what the map covers
    save_weights: bool = False
    fit: BatchFit = field(default_factory=BatchFit)  # the one mutable part: learnt from OOMs


@dataclass
class HostExplanation:
    """One method's explanation of a batch of B images and T classes each, on the host."""

    label: str
    classes: np.ndarray  # (B, T) class indices
    logits: np.ndarray  # (B, T) float32
    probabilities: np.ndarray  # (B, T) float32
    native: np.ndarray  # (B, T, h, w) float32, in [0, 1] when the method keeps its contract
    raw_range: np.ndarray | None  # (B, T, 2)
    weights: np.ndarray | None  # (B, T, K), kept only when asked (--save-weights)
    seconds: float = 0.0  # per image: its share of the batch's shared pass, plus this method

    @classmethod
    def of(
        cls, label: str, explanation: Explanation, save_weights: bool, copies: HostCopies
    ) -> HostExplanation:
        """The host copy of ``explanation``; ``copies`` holds the tensors already copied in this
        batch, so tensors shared by the methods cross to the host once."""

        def host(tensor: Tensor) -> np.ndarray:
            # Keyed by identity; the tensor is kept with its copy so that its id is not reused.
            if id(tensor) not in copies:
                floating = tensor.is_floating_point() and tensor.dtype != torch.float32
                copies[id(tensor)] = (
                    tensor,
                    (tensor.float() if floating else tensor).cpu().numpy(),
                )
            return copies[id(tensor)][1]

        weights = explanation.weights if save_weights else None
        return cls(
            label,
            host(explanation.classes),
            host(explanation.logits),
            host(explanation.probabilities),
            host(explanation.native),
            None if explanation.raw_range is None else host(explanation.raw_range),
            None if weights is None else host(weights),
        )


def explain_batch(
    explainer: Explainer,
    images: list[DecodedImage],
    save_weights: bool = False,
    fit: BatchFit | None = None,
) -> list[HostExplanation]:
    """Every method's explanation of the decodable ``images`` (index b counts only those), each
    with its per-image share of the time.

    An image's manifest class (``--target-column``) is explained first, followed by the
    explainer's top-k when its ``top_k`` is above 0; a missing or unknown class fails that image
    alone (its ``error`` is set here). The device running out of memory halves the batch
    (``fitting``) instead of failing its images.
    """
    targets = manifest_targets(explainer, images)
    usable = [image for image in images if image.error is None]
    if not usable:
        return []
    chosen: list[int | None] = [None] * len(usable) if targets is None else list(targets)
    indexed = list(zip(usable, chosen, strict=True))
    return fitting(explainer, indexed, save_weights, fit or BatchFit()) or []


Indexed = list[tuple[DecodedImage, int | None]]  # a decodable image and its manifest class


def fitting(
    explainer: Explainer, images: Indexed, save_weights: bool, fit: BatchFit
) -> list[HostExplanation] | None:
    """``explain_usable`` in slices of at most ``fit.limit`` images; an out-of-memory error
    halves the limit and retries the slice. One image that still does not fit fails alone
    (its ``error`` set; None when no image of ``images`` was explained)."""
    if fit.limit is not None and len(images) > fit.limit:
        parts, start = [], 0
        while start < len(images):  # the limit can shrink while the slices run
            size = fit.limit
            parts.append(fitting(explainer, images[start : start + size], save_weights, fit))
            start += size
        return merged(parts)
    try:
        return explain_usable(explainer, images, save_weights)
    except torch.OutOfMemoryError as exc:
        error = exc
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the failed attempt's blocks, before the smaller try
    if len(images) == 1:
        images[0][0].error = f"out of device memory on a single image: {error}".splitlines()[0]
        return None
    fit.limit = len(images) // 2
    log.warning("out of memory on a batch of %d images: batches of %d from now on",
                len(images), fit.limit)  # fmt: skip
    return fitting(explainer, images, save_weights, fit)


def merged(parts: list[list[HostExplanation] | None]) -> list[HostExplanation] | None:
    """Slices' explanations as one batch's, image after image (a slice whose one image failed
    alone is None); each method's seconds the mean over all the images."""
    explained = [part for part in parts if part]
    if len(explained) < 2:
        return explained[0] if explained else None
    counts = [len(part[0].classes) for part in explained]

    def cat(arrays: list[np.ndarray | None]) -> np.ndarray | None:
        return None if arrays[0] is None else np.concatenate(arrays)  # type: ignore[arg-type]

    return [
        HostExplanation(
            hosts[0].label,
            np.concatenate([h.classes for h in hosts]),
            np.concatenate([h.logits for h in hosts]),
            np.concatenate([h.probabilities for h in hosts]),
            np.concatenate([h.native for h in hosts]),
            cat([h.raw_range for h in hosts]),
            cat([h.weights for h in hosts]),
            sum(h.seconds * n for h, n in zip(hosts, counts, strict=True)) / sum(counts),
        )
        for hosts in zip(*explained, strict=True)
    ]


def explain_usable(
    explainer: Explainer, images: Indexed, save_weights: bool
) -> list[HostExplanation]:
    """One pass over decodable images: the backbone once, then every method, copied to the host
    once per tensor."""
    start = perf_counter()
    batch = torch.stack([image.tensor for image, _ in images])  # type: ignore[misc]
    targets = [target for _, target in images]
    if targets[0] is None:
        state = explainer.prepare(batch)
    else:
        chosen = torch.tensor(targets).view(-1, 1)
        if explainer.top_k > 0:
            state = explainer.prepare(batch)
            chosen = chosen.to(state.classes.device)
            merged = state.classes == chosen  # (B, k): the label is also that prediction
            state.classes = torch.cat([chosen, state.classes], dim=1)
            if bool(merged.any()):
                return labelled(explainer, state, merged, save_weights, start)
        else:
            state = explainer.prepare(batch, classes=chosen)
    shared = (perf_counter() - start) / len(explainer.methods)
    return host_explanations(explainer, state, save_weights, shared)


def host_explanations(
    explainer: Explainer, state: LayerState, save_weights: bool, shared: float
) -> list[HostExplanation]:
    """Every method on ``state``, copied to the host once per tensor; ``shared``: the seconds
    of the shared pass per method."""
    copies: HostCopies = {}
    explained = []
    start = perf_counter()
    for label, explanation in explainer.explanations(state):
        host = HostExplanation.of(label, explanation, save_weights, copies)
        host.seconds = (perf_counter() - start + shared) / len(state.classes)
        explained.append(host)
        start = perf_counter()
    return explained


def labelled(
    explainer: Explainer, state: LayerState, merged: Tensor, save_weights: bool, start: float
) -> list[HostExplanation]:
    """Label then top-k where some images' label is one of their predictions (``merged``, B x
    k): that class is explained once, in slot 0 (the label's); its prediction slot stays empty
    (class -1, no row), so slot t is rank t for every image. Images with and without such a
    slot are explained as two groups of the one backbone pass."""
    batch, slots = state.classes.shape
    keep = torch.cat([torch.ones_like(merged[:, :1]), ~merged], dim=1)  # (B, 1 + k)
    twice = merged.any(1)
    groups = [g for g in (torch.nonzero(~twice)[:, 0], torch.nonzero(twice)[:, 0]) if len(g)]
    states = [state.select(g, state.classes[g][keep[g]].view(len(g), -1)) for g in groups]
    shared = (perf_counter() - start) / len(explainer.methods) / len(groups)
    parts = [host_explanations(explainer, sub, save_weights, shared) for sub in states]
    order = torch.cat(groups)
    image, slot = torch.nonzero(keep[order], as_tuple=True)  # group after group, row-major
    at = (order[image].cpu().numpy(), slot.cpu().numpy())

    def placed(arrays: list[np.ndarray], fill: float) -> np.ndarray:
        flat = np.concatenate([a.reshape(-1, *a.shape[2:]) for a in arrays])
        out = np.full((batch, slots, *flat.shape[1:]), fill, flat.dtype)
        out[at] = flat
        return out

    explained = []
    for hosts in zip(*parts, strict=True):
        ranges = [h.raw_range for h in hosts if h.raw_range is not None]
        weights = [h.weights for h in hosts if h.weights is not None]
        explained.append(
            HostExplanation(
                hosts[0].label,
                placed([h.classes for h in hosts], -1),
                placed([h.logits for h in hosts], 0.0),
                placed([h.probabilities for h in hosts], 0.0),
                placed([h.native for h in hosts], 0.0),
                placed(ranges, 0.0) if ranges else None,
                placed(weights, 0.0) if weights else None,
                sum(h.seconds * len(g) for h, g in zip(hosts, groups, strict=True)) / batch,
            )
        )
    return explained


def manifest_targets(explainer: Explainer, images: list[DecodedImage]) -> list[int] | None:
    """The class index of each decodable image's manifest target, or None without targets."""
    if all(image.target is None for image in images):
        return None
    targets = []
    for image in images:
        if image.error is None:
            try:
                if not image.target:
                    raise ModelError("no class in the manifest's target column")
                targets.append(class_indices([image.target], explainer.model.class_names)[0])
            except ModelError as exc:
                image.error = f"target class: {exc}"
    return targets


def explain_rows(explainer: Explainer, form: RowFormat, images: list[DecodedImage]) -> pa.Table:
    """The rows of one batch: ``explain_batch`` then ``batch_rows``."""
    return batch_rows(form, images, explain_batch(explainer, images, form.save_weights, form.fit))


def batch_rows(
    form: RowFormat, images: list[DecodedImage], explained: list[HostExplanation]
) -> pa.Table:
    """Rows for ``images`` in their order: one per (image, method, class) of the decodable ones
    (``explained`` index b counts those), one per image that failed or broke the contract."""
    usable = [image for image in images if image.error is None]
    reasons: dict[int, str] = {}  # b -> the first method's broken contract
    for host in explained:
        finite = {
            "logits": host.logits,
            "probabilities": host.probabilities,
            "weights": host.weights,
        }
        for b, reason in enumerate(contract_violations(host.label, host.native, finite)):
            if reason is not None:
                reasons.setdefault(b, reason)
    ok = [b for b in range(len(usable)) if b not in reasons]
    errors = {id(usable[b]): reason for b, reason in reasons.items()}
    failed = [image for image in images if image.error is not None or id(image) in errors]
    explained_table = _explained(form, [usable[b] for b in ok], ok, explained)
    if not failed:
        return explained_table
    failed_table = _failed(form, failed, [image.error or errors[id(image)] for image in failed])
    # Back to input order: each image's rows where the image is (an empty slot has none).
    slots = (explained[0].classes >= 0).sum(1) if explained else np.zeros(0, np.int64)
    counts = iter(len(explained) * int(slots[b]) for b in ok)
    order, done, lost = [], 0, explained_table.num_rows
    for image in images:
        if image.error is not None or id(image) in errors:
            order.append(lost)
            lost += 1
        else:
            per_image = next(counts)
            order.extend(range(done, done + per_image))
            done += per_image
    return pa.concat_tables([explained_table, failed_table]).take(pa.array(order))


def pruned_rows(form: RowFormat, keys: list[str]) -> pa.Table:
    """Tombstones: each of ``keys`` left the input; readers hide every earlier row of it."""
    return _table(
        len(keys),
        image_path=pa.array(keys, pa.string()),
        model=_repeat(form.model, len(keys)),
        layer=_repeat(form.layer, len(keys)),
        status=_repeat("pruned", len(keys)),
        run_id=_repeat(form.stamp.run_id, len(keys)),
    )


def _explained(
    form: RowFormat, images: list[DecodedImage], ok: list[int], explained: list[HostExplanation]
) -> pa.Table:
    """Rows of ``images`` (index b ``ok`` into ``explained``): by image, then method, then class."""
    if not ok:
        return _table(0)
    methods, (batch, ranks) = len(explained), explained[0].classes.shape
    n = len(ok) * methods * ranks
    image_of = np.repeat(np.arange(len(ok)), methods * ranks)  # row -> index into images
    b = np.asarray(ok, dtype=np.int64)[image_of]
    m = np.tile(np.repeat(np.arange(methods), ranks), len(ok))
    t = np.tile(np.arange(ranks), len(ok) * methods)

    def gather(arrays: list[np.ndarray]) -> np.ndarray:  # (B, T, ...) per method -> per row
        return np.stack(arrays)[m, b, t]

    classes = gather([host.classes for host in explained]).astype(np.int64)
    no_range = np.zeros((batch, ranks, 2), np.float32)
    ranges = gather([no_range if h.raw_range is None else h.raw_range for h in explained])
    unranged = np.array([host.raw_range is None for host in explained])[m]
    shapes = np.array([host.native.shape[2:] for host in explained])[m]
    columns = _image_columns(form, images, image_of)
    columns |= {
        "method": pa.array(np.array([host.label for host in explained], dtype=object)[m]),
        "class_rank": pa.array(t, pa.int16()),
        "class_index": pa.array(classes, pa.int32()),
        "class_name": pa.array([form.class_names[c] for c in classes], pa.string()),
        "logit": pa.array(gather([host.logits for host in explained]), pa.float32()),
        "probability": pa.array(gather([h.probabilities for h in explained]), pa.float32()),
        "map": _lists([host.native[i] for i in ok for host in explained], ranks),
        "map_height": pa.array(shapes[:, 0], pa.int32()),
        "map_width": pa.array(shapes[:, 1], pa.int32()),
        "raw_min": pa.array(ranges[:, 0], pa.float32(), mask=unranged),
        "raw_max": pa.array(ranges[:, 1], pa.float32(), mask=unranged),
        "status": _repeat("ok", n),
        "seconds": pa.array(
            np.array([image.seconds for image in images])[image_of]
            + np.array([host.seconds for host in explained])[m],
            pa.float32(),
        ),
    }
    columns["target_role"] = _roles(form.stamp.targets, t, (classes < 0).reshape(-1, ranks), n)
    if form.save_weights:
        weights = [None if h.weights is None else h.weights[i] for i in ok for h in explained]
        columns["weights"] = _lists(weights, ranks)
    rows = _table(n, **columns)
    present = classes >= 0  # a label that is also a prediction has no prediction row
    return rows if present.all() else rows.filter(pa.array(present))


def _roles(targets: str, rank: np.ndarray, empty: np.ndarray, n: int) -> pa.Array:
    """``target_role`` per row: with a manifest's labels (``column=...``) rank 0 is the
    ``label`` (``both`` when it is also one of the explained predictions: an empty slot of the
    row's image and method), higher ranks the ``prediction``s; top-k runs explain predictions
    only; given ``--classes`` are neither (null)."""
    if targets.startswith("top-"):
        return _repeat("prediction", n)
    if not targets.startswith("column="):
        return pa.nulls(n, pa.string())
    both = np.repeat(empty.any(1), empty.shape[1])
    role = np.where(rank > 0, "prediction", np.where(both, "both", "label"))
    return pa.array(role.astype(object), pa.string())


def _failed(form: RowFormat, images: list[DecodedImage], errors: list[str]) -> pa.Table:
    columns = _image_columns(form, images, np.arange(len(images)), boxes=False)
    columns |= {
        "status": _repeat("failed", len(images)),
        "error": pa.array(errors, pa.string()),
        "seconds": pa.array([image.seconds for image in images], pa.float32()),
    }
    return _table(len(images), **columns)


def _image_columns(
    form: RowFormat, images: list[DecodedImage], index: np.ndarray, *, boxes: bool = True
) -> dict[str, pa.Array]:
    """The columns that describe each row's image (``index``: row -> image) and its run."""
    infos = [image.info for image in images]

    def per_row(values: Sequence[object], kind: pa.DataType) -> pa.Array:
        return pa.array(values, kind).take(pa.array(index, pa.int64()))

    columns = {
        "image_path": per_row([i.key for i in infos], pa.string()),
        "image_sha256": per_row([i.sha256 for i in infos], pa.string()),
        "original_width": per_row([i.width for i in infos], pa.int32()),
        "original_height": per_row([i.height for i in infos], pa.int32()),
        "file_size": per_row([i.size for i in infos], pa.int64()),
        "file_mtime_ns": per_row([i.mtime_ns for i in infos], pa.int64()),
        "model": _repeat(form.model, len(index)),
        "layer": _repeat(form.layer, len(index)),
        "targets": _repeat(form.stamp.targets, len(index)),
        "run_id": _repeat(form.stamp.run_id, len(index)),
    }
    if boxes and form.crop_box is not None:
        crop = form.crop_box
        box = [list(crop(i.width, i.height)) for i in infos]  # type: ignore[arg-type]
        columns["map_box"] = per_row(box, pa.list_(pa.float32()))
    return columns


def _lists(blocks: list[np.ndarray | None], ranks: int) -> pa.Array:
    """list<float32> from (T, ...) blocks, one per (image, method) in row order: a block gives
    one list per class (a None block, T nulls), with a single copy of the values."""
    sizes = [0 if block is None else block[0].size for block in blocks]
    offsets = np.zeros(len(blocks) * ranks + 1, dtype=np.int32)
    np.cumsum(np.repeat(np.array(sizes, np.int32), ranks), out=offsets[1:])
    present = [block.reshape(-1) for block in blocks if block is not None]
    values = np.concatenate(present) if present else np.zeros(0, np.float32)
    return pa.ListArray.from_arrays(
        pa.array(offsets, pa.int32()),
        pa.array(values, pa.float32()),
        type=pa.list_(pa.float32()),
        mask=pa.array(np.repeat([block is None for block in blocks], ranks), pa.bool_()),
    )


def _repeat(value: str, n: int) -> pa.Array:
    return pa.array([value] * n, pa.string())


def _table(n: int, **columns: pa.Array) -> pa.Table:
    """A table of ``SCHEMA`` with ``n`` rows; absent columns are null."""
    return pa.Table.from_arrays(
        [columns[f.name] if f.name in columns else pa.nulls(n, f.type) for f in SCHEMA],
        schema=SCHEMA,
    )


__all__ = [
    "BatchFit",
    "HostExplanation",
    "RowFormat",
    "batch_rows",
    "explain_batch",
    "explain_rows",
    "explain_usable",
    "fitting",
    "manifest_targets",
    "merged",
    "pruned_rows",
]
