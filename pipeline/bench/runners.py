"""``fdpipe bench``: named benchmark suites, results as JSON plus a short table.

Suite "runners": FD-CAM seconds per image (median, end to end from a decoded image to the
weights, one class), masked-head evaluations per second and peak RSS, for VGG16 (random
weights) and SqueezeNet, for every runner this machine has; in the same run the ``grad-cam``
library's AblationCAM on one VGG16 image and the plain torch masked-head loop (128 masks per
batch, the authors' way), reported as ratios to fdpipe's fastest runner. Each measurement runs
in a fresh process, so its peak RSS is its own.
"""

from __future__ import annotations

import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING

import click
import torch
from fdpipe.api import Explainer
from fdpipe.backends import REFERENCE_RUNTIME
from fdpipe.export.loading import load_model
from fdpipe.export.onnx import export_model
from fdpipe.export.tensorrt import EngineOptions, build_engines, tensorrt_missing
from fdpipe.kernels.fdcam import similarity_groups
from PIL import Image
from skimage import data

if TYPE_CHECKING:  # the package imports this module to register the suite
    from fdpipe.bench import Settings

MODELS = {"vgg16": False, "squeezenet1_1": True}  # name -> real (pretrained) weights
BATCH = 8  # images per batch for the throughput figure (dataset runs batch images)
TARGETS = {"seconds_per_image": 0.35, "vs_ablationcam": 150.0, "vs_plain_loop": 5.0}


def photos() -> list[Image.Image]:
    """Decoded real photos bundled with scikit-image (no download)."""
    arrays = (data.chelsea(), data.coffee(), data.astronaut(), data.rocket())
    return [Image.fromarray(a).convert("RGB") for a in arrays]


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: ru_maxrss would include the parent's peak at fork)."""
    status = Path("/proc/self/status")
    if status.exists():
        line = next(x for x in status.read_text().splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # macOS: bytes


def measure_fdcam(
    model_name: str, runner: str, artifacts: str | None, repeats: int, threads: int
) -> dict[str, object]:
    """One configuration, run in its own process: seconds per image, head evals/s, peak RSS."""
    torch.set_num_threads(threads)
    model = load_model(model_name, pretrained=MODELS[model_name])
    explicit = runner == "torch-explicit"
    explainer = Explainer(
        model,
        "fdcam",
        runtime=REFERENCE_RUNTIME if explicit else runner,
        artifacts=Path(artifacts) if artifacts else None,
    )
    images = photos()

    def seconds_per_image(batch: int, rounds: int) -> list[float]:
        seconds = []
        for i in range(rounds + 1):  # the first round warms up
            synchronize()
            start = time.perf_counter()
            chosen = [images[(i * batch + j) % len(images)] for j in range(batch)]
            explainer(chosen)
            synchronize()
            seconds.append((time.perf_counter() - start) / batch)
        return seconds[1:]

    seconds = seconds_per_image(1, repeats)
    batched = seconds_per_image(BATCH, max(2, repeats // 3)) if not explicit else []
    state = explainer.prepare(images[0])
    keep = similarity_groups(state.activations).to(state.activations.dtype)
    masks = torch.cat([keep, 1 - keep], dim=1)  # FD-CAM's 2K switch-on and switch-off masks
    head_seconds = []
    for _ in range(3):
        synchronize()
        start = time.perf_counter()
        explainer.scorer(state.activations, masks, state.classes, extras=state.extras)
        synchronize()  # CUDA runs asynchronously: count the GPU work, not its launch
        head_seconds.append(time.perf_counter() - start)
    return {
        "model": model_name,
        "runner": runner,
        "backend": explainer.backend.description,
        "seconds_per_image": statistics.median(seconds),
        "seconds_all": seconds,
        f"seconds_per_image_batch{BATCH}": statistics.median(batched) if batched else None,
        "head_evals_per_second": masks.shape[1] / statistics.median(head_seconds),
        "peak_rss_mb": _peak_rss_mb(),
    }


def measure_ablationcam(threads: int) -> dict[str, object]:
    """The ``grad-cam`` library's AblationCAM on one VGG16 image (whole network per channel)."""
    from pytorch_grad_cam import AblationCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.set_num_threads(threads)
    model = load_model("vgg16", pretrained=False)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where fdpipe runs it too
    model.module.to(device)
    layer = model.module.get_submodule(model.layer)
    inputs = model.preprocess(photos()[0])[None].to(device)
    with torch.no_grad():
        target = int(model.module(inputs).argmax())
    start = time.perf_counter()
    AblationCAM(model.module, [layer])(inputs, [ClassifierOutputTarget(target)])
    synchronize()
    return {
        "model": "vgg16",
        "runner": "grad-cam AblationCAM",
        "backend": "pytorch_grad_cam.AblationCAM (batch 32)",
        "seconds_per_image": time.perf_counter() - start,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _in_fresh_process(function: Callable[..., dict[str, object]], *args: object) -> dict:
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def _runners() -> list[str]:
    runners = ["torch", "onnxruntime", "auto"]
    return [*runners, "tensorrt"] if tensorrt_missing() is None else runners


def runners_suite(settings: Settings) -> dict[str, object]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="fdpipe-bench-") as scratch:
        for name, real in MODELS.items():
            artifacts = Path(scratch) / name
            engines = None
            if tensorrt_missing() is None:  # one image per batch, as measured here
                engines = partial(build_engines, options=EngineOptions(max_batch=1))
            torch.set_num_threads(settings.threads)
            export_model(load_model(name, pretrained=real), artifacts, engines=engines)
            for runner in [*_runners(), *(["torch-explicit"] if name == "vgg16" else [])]:
                args = (name, runner, str(artifacts), settings.repeats, settings.threads)
                rows.append(_in_fresh_process(measure_fdcam, *args))
                click.echo(f"  {name} {runner}: {rows[-1]['seconds_per_image']:.3f} s/image")
    os.environ.setdefault("TQDM_DISABLE", "1")  # children inherit it: no grad-cam progress bar
    rows.append(_in_fresh_process(measure_ablationcam, settings.threads))
    click.echo(f"  grad-cam AblationCAM: {rows[-1]['seconds_per_image']:.1f} s/image")
    vgg = {r["runner"]: r for r in rows if r["model"] == "vgg16"}
    best = min((vgg[r] for r in _runners()), key=lambda r: r["seconds_per_image"])
    seconds = best["seconds_per_image"]
    plain = vgg["torch-explicit"]
    ratios = {
        "fastest_runner": best["runner"],
        "seconds_per_image": seconds,
        f"seconds_per_image_batch{BATCH}": min(
            vgg[r][f"seconds_per_image_batch{BATCH}"] for r in _runners()
        ),
        "vs_ablationcam": vgg["grad-cam AblationCAM"]["seconds_per_image"] / seconds,
        # FD-CAM end to end (same backbone and gradients) and the masked-head part alone.
        "vs_plain_loop": plain["seconds_per_image"] / seconds,
        "vs_plain_loop_masked_head": best["head_evals_per_second"] / plain["head_evals_per_second"],
    }
    met = {
        "seconds_per_image": seconds <= TARGETS["seconds_per_image"],
        "vs_ablationcam": ratios["vs_ablationcam"] >= TARGETS["vs_ablationcam"],
        "vs_plain_loop": ratios["vs_plain_loop"] >= TARGETS["vs_plain_loop"],
        "vs_plain_loop_masked_head": (
            ratios["vs_plain_loop_masked_head"] >= TARGETS["vs_plain_loop"]
        ),
    }
    return {"rows": rows, "vgg16": ratios, "targets": TARGETS, "targets_met": met}
