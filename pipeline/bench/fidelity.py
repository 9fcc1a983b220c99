"""The "fidelity" bench suite: what bf16 and fp16 do to the maps, against fp32, per method.

For each model (the real SqueezeNet 1.1 and EfficientNet-Lite0, VGG16 with seeded random
weights) and each method, the maps of ``precision`` (bf16, fp16: backbone and masked-head
products in the low type, accumulated in fp32, the last layer's target rows in fp32) and of
``<precision>-autocast`` (plain torch autocast over the whole fp32 explainer: every product in
the low type, logits included) are compared with fp32 on the same photos and the same target
class (fp32's top-1): Pearson r of the maps (mean and worst image), top-1 agreement, Spearman
rank correlation of the perturbation scores (FD-CAM, Ablation-CAM, Score-CAM, Group-CAM), and
the change of the insertion/deletion AUCs (RISE protocol, scored by the fp32 model; not on the
random VGG16, whose curves mean nothing).

Everything runs on the GPU where there is one (``DEVICE``), natively in bf16/fp16. On a CPU
without native bf16/fp16 the low-precision products are emulated (``emulate``: inputs and outputs
rounded to the type, fp32 accumulation, which is what the hardware computes up to summation
order); the JSON records which.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import TYPE_CHECKING

import click
import torch
from fdpipe.api import Explainer, Explanation
from fdpipe.demo import PHOTOS
from fdpipe.evaluation.curves import CurveProtocol, insertion_deletion
from fdpipe.export.loading import LoadedModel, load_model
from fdpipe.kernels import METHODS, SplitNetwork
from fdpipe.kernels.precision import DTYPES, emulate, precision_unsupported
from PIL import Image
from torch import Tensor

if TYPE_CHECKING:  # the package imports this module to register the suite
    from fdpipe.bench import Settings

# (model, real weights, photos, methods left out): the suite's size, kept to minutes on 2 shared
# cores. Score-CAM runs one full forward pass per channel: 512 on SqueezeNet (kept), 1,280 on
# EfficientNet-Lite0 and 512 VGG16 passes per image (left out: beyond the budget here).
MODELS = (
    ("squeezenet1_1", True, ("cat", "coffee"), ()),
    ("efficientnet_lite0", True, ("cat", "coffee"), ("scorecam",)),
    ("vgg16", False, ("cat",), ("scorecam",)),
)
REDUCED_PRECISIONS = ("bf16", "fp16")
BAR = 0.999  # FD-CAM map r against fp32 for a path to become precision="auto"
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where Explainer runs


def pearson(a: Tensor, b: Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def spearman(a: Tensor, b: Tensor) -> float:
    return pearson(a.flatten().argsort().argsort(), b.flatten().argsort().argsort())


def _run(
    model: LoadedModel,
    images: list[Image.Image],
    precision: str,
    classes: Tensor | None,
    methods: list[str],
) -> tuple[dict[str, Explanation], dict[str, str]]:
    """Each method's explanation in ``precision`` ("fp32", "bf16", "bf16-autocast", ...)."""
    low, _, autocast = precision.partition("-")
    explanations, errors = {}, {}
    for name in methods:  # one Explainer per method: a failing method does not hide the others
        try:
            explainer = Explainer(
                model, name, precision="fp32" if autocast or low == "fp32" else low
            )
            with torch.autocast(DEVICE.type, dtype=DTYPES[low], enabled=bool(autocast)):
                explanations[name] = explainer(images, classes=classes)[name]
        except Exception as exc:  # recorded in the table: a method this path cannot run
            errors[name] = f"{type(exc).__name__}: {exc}"
    return explanations, errors


def _compare(
    network: SplitNetwork,
    batch: Tensor,
    reference: dict[str, Explanation],
    other: dict[str, Explanation],
    curves: bool,
) -> dict[str, dict[str, object]]:
    out = {}
    names = [n for n in reference if n in other]
    aucs = {}
    if curves and names:
        protocol = CurveProtocol(batch_size=32)
        for label, maps in (("fp32", reference), ("low", other)):
            saliency = torch.cat([maps[n].maps for n in names], dim=1)  # (B, methods, H, W)
            result = insertion_deletion(network, batch, saliency, protocol)
            aucs[label] = (result.insertion_auc, result.deletion_auc)  # (B, methods)
    for i, name in enumerate(names):
        ref, low = reference[name], other[name]
        per_image = [pearson(a, b) for a, b in zip(ref.maps, low.maps, strict=True)]
        row: dict[str, object] = {
            "map_r_mean": sum(per_image) / len(per_image),
            "map_r_min": min(per_image),
        }
        if ref.scores is not None and low.scores is not None:
            row["score_spearman"] = min(
                spearman(a, b) for a, b in zip(ref.scores, low.scores, strict=True)
            )
        if aucs:
            row["insertion_auc_change"] = float(
                (aucs["low"][0][:, i] - aucs["fp32"][0][:, i]).abs().mean()
            )
            row["deletion_auc_change"] = float(
                (aucs["low"][1][:, i] - aucs["fp32"][1][:, i]).abs().mean()
            )
        out[name] = row
    return out


def model_fidelity(
    name: str, real: bool, photo_names: tuple[str, ...], left_out: tuple[str, ...]
) -> list[dict[str, object]]:
    """The suite's rows for one model: every method and path against fp32."""
    started = time.perf_counter()
    emulated = {p: precision_unsupported(p, DEVICE) is not None for p in REDUCED_PRECISIONS}
    methods = [m for m in METHODS if m not in left_out]
    model = load_model(name, pretrained=real)
    images = [Image.fromarray(PHOTOS[p]()).convert("RGB") for p in photo_names]
    network = Explainer(model, "gradcam").network  # fp32, on DEVICE: scores the curves
    batch = torch.stack([model.preprocess(image) for image in images]).to(network.device)
    reference, failed = _run(model, images, "fp32", None, methods)
    classes = next(iter(reference.values())).classes  # fp32's top-1, for every path
    rows: list[dict[str, object]] = []
    for precision in REDUCED_PRECISIONS:
        # Plain autocast over everything, logits included: for FD-CAM, to show the fp32 rows.
        for variant, chosen in ((precision, methods), (f"{precision}-autocast", ["fdcam"])):
            with emulate(precision) if emulated[precision] else nullcontext():
                other, errors = _run(model, images, variant, classes, chosen)
                top1 = _top1(model, images, variant, classes)
            compared = _compare(network, batch, reference, other, curves=real)
            for method, row in compared.items():
                row["top1_agreement"] = top1
                row["emulated"] = emulated[precision]
                rows.append({"model": name, "method": method, "precision": variant, **row})
            for method, error in (errors | failed).items():
                rows.append({"model": name, "method": method, "precision": variant, "error": error})
            fd = compared.get("fdcam", {})
            click.echo(f"  {name} {variant}: FD-CAM map r {fd.get('map_r_min', float('nan')):.5f}")
    click.echo(f"  {name}: {time.perf_counter() - started:.0f} s")
    return rows


def fidelity_suite(settings: Settings) -> dict[str, object]:
    torch.set_num_threads(settings.threads)
    rows: list[dict[str, object]] = []
    for name, real, photo_names, left_out in MODELS:
        rows += model_fidelity(name, real, photo_names, left_out)
    return {
        "columns": [
            "model",
            "precision",
            "method",
            "map_r_mean",
            "map_r_min",
            "top1_agreement",
            "score_spearman",
            "insertion_auc_change",
            "deletion_auc_change",
            "error",
        ],
        "rows": rows,
        "models": {
            name: {"photos": list(photos), "methods_left_out": list(out)}
            for name, _, photos, out in MODELS
        },
        "device": str(DEVICE),
        "emulated": {p: precision_unsupported(p, DEVICE) is not None for p in REDUCED_PRECISIONS},
        "bar_fdcam_map_r": BAR,
        "passes_bar": _passes(rows),
    }


def _top1(model: LoadedModel, images: list[Image.Image], variant: str, classes: Tensor) -> float:
    """Fraction of images whose top-1 class in this path is fp32's."""
    low, _, autocast = variant.partition("-")
    explainer = Explainer(model, "gradcam", precision="fp32" if autocast else low)
    with torch.autocast(DEVICE.type, dtype=DTYPES[low], enabled=bool(autocast)):
        state = explainer.prepare(images)
    return float((state.logits.argmax(1) == classes[:, 0]).float().mean())


def _passes(rows: list[dict[str, object]]) -> dict[str, bool]:
    """Per (model, path): FD-CAM's worst map r against fp32 at or above the bar."""
    return {
        f"{r['model']} {r['precision']}": float(r["map_r_min"]) >= BAR  # type: ignore[arg-type]
        for r in rows
        if r["method"] == "fdcam" and "map_r_min" in r
    }


__all__ = [
    "BAR",
    "MODELS",
    "REDUCED_PRECISIONS",
    "fidelity_suite",
    "model_fidelity",
    "pearson",
    "spearman",
]
