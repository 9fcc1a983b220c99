"""Small image files on disk for the pipeline tests (crops of the bundled photos)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from skimage import data

SOURCES = (data.chelsea, data.coffee, data.astronaut, data.rocket)


def write_images(directory: Path, count: int, size: tuple[int, int] = (64, 48)) -> list[Path]:
    """``count`` distinct small JPEGs ``img_000.jpg``... (every third one in a subdirectory)."""
    photos = [Image.fromarray(load()) for load in SOURCES]
    paths = []
    for i in range(count):
        photo = photos[i % len(photos)]
        shift = 7 * (i // len(photos))
        crop = photo.crop((shift, shift, photo.width - shift, photo.height - shift)).resize(size)
        path = directory / ("nested" if i % 3 == 2 else "") / f"img_{i:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        crop.save(path, quality=90)
        paths.append(path)
    return paths


def explain_command(images: Path, output: Path, *extra: str) -> list[str]:
    """``fdpipe explain`` arguments for the small runs of the job tests: SqueezeNet, Grad-CAM,
    batches and parts of two images, one decode thread (a kill lands between parts)."""
    return [
        "explain", "-i", str(images), "-o", str(output), "--model", "squeezenet1_1",
        "--method", "gradcam", "--batch-size", "2", "--part-size", "2", "--workers", "1",
        "--no-progress", *extra,
    ]  # fmt: skip
