"""The "evaluation" bench suite: how many (image, method) pairs each metric scores per second.

Every metric scores IMAGES images x METHODS maps at once (the perturbed inputs of every image
and method share the forward passes; the clean pass is computed once and handed in), on
SqueezeNet 1.1 with random weights (the cost does not depend on what the weights are), with
smooth random maps (13 x 13, upsampled as a CAM is). The peer, measured in the same run, is the
same insertion / deletion scored one (image, method) per call, each call computing its own
clean pass: what ``fdpipe evaluate`` did before it scored images together.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from fdpipe.evaluation.confidence import confidence_change
from fdpipe.evaluation.curves import CurveProtocol, insertion_deletion
from fdpipe.evaluation.road import ROADProtocol, road_scores
from fdpipe.export.loading import load_model
from fdpipe.export.split import split_at
from fdpipe.kernels.postprocess import upsample_map

if TYPE_CHECKING:  # bench/__init__.py imports this module to register the suite
    from fdpipe.bench import Settings

IMAGES = 2
METHODS = 3
ROAD_FRACTIONS = (0.1, 0.5, 0.9)  # three of the nine: one system solve per mask dominates


def _seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def evaluation_suite(settings: Settings) -> dict[str, object]:
    torch.set_num_threads(settings.threads)
    model = load_model("squeezenet1_1", pretrained=False, seed=0)
    network = split_at(model.module, model.layer)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(IMAGES, 3, 224, 224, generator=generator)
    natives = torch.rand(IMAGES * METHODS, 13, 13, generator=generator)
    maps = torch.stack([upsample_map(m, (224, 224)) for m in natives]).view(
        IMAGES, METHODS, 224, 224
    )
    with torch.no_grad():
        clean = network(images)
    protocol = CurveProtocol()
    road = ROADProtocol(fractions=ROAD_FRACTIONS)
    classes = clean.argmax(1)
    cases: dict[str, Callable[[], object]] = {
        "curves (insertion + deletion)": lambda: insertion_deletion(
            network, images, maps, protocol, clean
        ),
        "curves, one image and method per call (peer)": lambda: [
            insertion_deletion(network, images[i : i + 1], maps[i : i + 1, m : m + 1], protocol)
            for i in range(IMAGES)
            for m in range(METHODS)
        ],
        "confidence (average drop, increase)": lambda: confidence_change(
            network, images, maps, clean
        ),
        f"road (MoRF + LeRF, {len(ROAD_FRACTIONS)} fractions)": lambda: [
            road_scores(network, images, maps, classes, order, road) for order in ("morf", "lerf")
        ],
    }
    _seconds(cases["confidence (average drop, increase)"])  # warm-up
    rows: list[dict[str, object]] = []
    for name, run in cases.items():
        seconds = _seconds(run)
        rows.append(
            {
                "metric": name,
                "images": IMAGES,
                "methods": METHODS,
                "seconds": seconds,
                "image_methods_per_second": IMAGES * METHODS / seconds,
            }
        )
    together, alone = (float(r["seconds"]) for r in rows[:2])  # type: ignore[arg-type]
    return {"rows": rows, "curves_speedup_over_one_per_call": alone / together}


__all__ = ["evaluation_suite"]
