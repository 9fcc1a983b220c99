"""Decoding any image file into the RGB picture SPEC section 0 starts from."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)


class ImageDecodeError(ValueError):
    """A file that is not a usable image; the message says why."""


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, 8 bits: 16-bit and float scaled down, transparency composited over white."""
    if image.mode in {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}:
        values = np.asarray(image, dtype=np.float64)
        # "I;16*" is 16-bit by construction (a dark one must stay dark); plain "I" says nothing.
        sixteen_bits = image.mode.startswith("I;16") or values.max(initial=0) > 255
        high = 65535.0 if image.mode != "F" and sixteen_bits else 255.0
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
        # Image.open reads only the header; refuse what Pillow deems a decompression bomb
        # (more than Image.MAX_IMAGE_PIXELS, ~89 Mpx) before decoding a single pixel. The check
        # is ours, not a warnings filter, because images are decoded on worker threads.
        with Image.open(path) as opened:
            width, height = opened.size
            if width * height > Image.MAX_IMAGE_PIXELS:
                raise ImageDecodeError(
                    f"image too large: {width}x{height} pixels exceeds the limit of "
                    f"{Image.MAX_IMAGE_PIXELS} (PIL.Image.MAX_IMAGE_PIXELS)"
                )
            opened.load()
            oriented = ImageOps.exif_transpose(opened)
            return to_rgb(oriented)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image too large: {exc}") from None
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image file (unknown format or damaged header)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"cannot decode image: {exc}") from exc
