"""Decoding any image file into the RGB picture SPEC section 0 starts from."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
MAX_PIXELS = 16_384 * 16_384  # beyond this a file is refused rather than decoded into ~1 GB


class ImageDecodeError(ValueError):
    """A file that is not a usable image; the message says why."""


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, 8 bits: 16-bit and float scaled down, transparency composited over white."""
    if image.mode in {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}:
        values = np.asarray(image, dtype=np.float64)
        high = 65535.0 if image.mode.startswith("I") and values.max(initial=0) > 255 else 255.0
        if image.mode == "F" and values.max(initial=0) <= 1.0:
            high = 1.0
        scaled = np.clip(np.rint(values / high * 255.0), 0, 255).astype(np.uint8)
        image = Image.fromarray(scaled, mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open, apply EXIF orientation, convert to RGB. Raises ImageDecodeError with a reason."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageDecodeError("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                width, height = opened.size
                if width * height > MAX_PIXELS:
                    raise ImageDecodeError(
                        f"image too large: {width}x{height} pixels (limit {MAX_PIXELS})"
                    )
                opened.load()
                oriented = ImageOps.exif_transpose(opened)
                return to_rgb(oriented)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image file (format not recognised)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Warning) as exc:
        raise ImageDecodeError(f"cannot decode image: {exc}") from exc
