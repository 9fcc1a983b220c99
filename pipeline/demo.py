"""``fdpipe demo``: explain scikit-image's bundled photos offline and draw a contact sheet."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds
from fdpipe.export.request import OFFLINE_MODEL
from fdpipe.job.config import JobConfig
from fdpipe.job.progress import Summary
from fdpipe.job.reader import images_root, select_rows
from fdpipe.job.run import run_job
from fdpipe.render import render_sheets
from fdpipe.report import SiteSummary, write_site
from PIL import Image
from skimage import data

PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "cat": data.chelsea,
    "coffee": data.coffee,
    "astronaut": data.astronaut,
    "rocket": data.rocket,
    "motorcycle": lambda: data.stereo_motorcycle()[0],
    "camera": data.camera,  # grayscale: exercises the RGB conversion
}
DEMO_METHODS = ("fdcam", "gradcam", "gradcampp", "layercam", "ablationcam", "fgcam")


def write_photos(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, load in PHOTOS.items():
        path = directory / f"{name}.png"
        if not path.exists():
            Image.fromarray(load()).save(path)
        paths.append(path)
    return paths


def run_demo(
    output: Path, methods: tuple[str, ...] = DEMO_METHODS
) -> tuple[Summary, list[Path], SiteSummary]:
    """Photos to ``output/images``, Parquet to ``output/explanations``, sheet to ``output``,
    the HTML report to ``output/report``."""
    write_photos(output / "images")
    config = JobConfig(
        input=output / "images",
        output=output / "explanations",
        model=OFFLINE_MODEL,
        methods=methods,
        batch_size=len(PHOTOS),
        overwrite=True,
    )
    summary = run_job(config)
    rows = select_rows(config.output, ranks=[0])
    root = images_root(config.output)
    sheets = render_sheets(rows, root, output)
    site = write_site(config.output, output / "report", images_root=root)
    return summary, sheets, site


def predictions(explanations: Path) -> list[str]:
    """One line per image: its top-1 class and probability."""
    table = ds.dataset(explanations).to_table(
        columns=["image_path", "class_name", "probability"],
        filter=(pc.field("class_rank") == 0) & (pc.field("status") == "ok"),
    )
    first = table.group_by("image_path", use_threads=False).aggregate(
        [("class_name", "first"), ("probability", "first")]
    )
    columns = first.to_pydict()
    found = zip(
        columns["image_path"],
        columns["class_name_first"],
        columns["probability_first"],
        strict=True,
    )
    return [f"{path}: {name} ({probability:.2f})" for path, name, probability in sorted(found)]


__all__ = ["DEMO_METHODS", "PHOTOS", "predictions", "run_demo", "write_photos"]
