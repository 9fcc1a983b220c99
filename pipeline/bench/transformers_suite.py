"""The "transformers" bench suite: seconds per image of FD-CAM against Score-CAM and Ablation-CAM
(Grad-CAM as the floor) on timm's ViT-Tiny, and FD-CAM, Ablation-CAM and Grad-CAM on Swin-T.

Random weights (the cost does not depend on what they are; nothing is downloaded), 224 x 224,
each model's default layer (ViT: ``blocks.11.norm1``, METHODS.md section 6; Swin: ``norm``),
IMAGES smooth random inputs, one class per image; every method is timed on the same inputs in
the same run, after a warm-up call, by an ``Explainer`` of its own (its backbone pass included),
so the ratios to FD-CAM are what the suite reports. Score-CAM is left out on Swin-T: its 768
full forward passes per image (about 3.5 TFLOP) take tens of minutes on two CPU cores.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import click
import torch
from fdpipe.api import Explainer

if TYPE_CHECKING:  # bench/__init__.py imports this module to register the suite
    from fdpipe.bench import Settings

IMAGES = 2
MODELS = {
    "vit_tiny_patch16_224": ("gradcam", "fdcam", "ablationcam", "scorecam"),
    "swin_tiny_patch4_window7_224": ("gradcam", "fdcam", "ablationcam"),
}
PEER = "fdcam"  # ratios: each method's seconds over FD-CAM's


def transformers_suite(settings: Settings) -> dict[str, object]:
    import timm  # fdpipe[timm]; only this suite needs it

    torch.set_num_threads(settings.threads)
    generator = torch.Generator().manual_seed(0)
    smooth = torch.rand(IMAGES, 3, 14, 14, generator=generator)
    images = torch.nn.functional.interpolate(smooth, size=(224, 224), mode="bilinear") * 4 - 2
    rows: list[dict[str, object]] = []
    for name, methods in MODELS.items():
        torch.manual_seed(0)
        module = timm.create_model(name, pretrained=False).eval()
        seconds = {}
        for method in methods:
            explainer = Explainer(module, method, device="cpu")
            explainer(images[:1])  # warm-up: the cut, the tables, the first pass
            start = time.perf_counter()
            explainer(images)
            seconds[method] = (time.perf_counter() - start) / IMAGES
            click.echo(f"  {name} {method}: {seconds[method]:.2f} s/image")
        layer = explainer.model.layer
        rows += [
            {
                "model": name,
                "layer": layer,
                "method": method,
                "images": IMAGES,
                "seconds_per_image": s,
                f"ratio_to_{PEER}": s / seconds[PEER],
            }
            for method, s in seconds.items()
        ]
    return {"rows": rows, "images": IMAGES, "input": [224, 224]}


__all__ = ["IMAGES", "MODELS", "transformers_suite"]
