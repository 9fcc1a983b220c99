"""Decoding any image (file, PIL image, array) into the RGB picture METHODS.md section 0 starts
from, and a batch of them into the model's preprocessed input tensor."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

ImageLike = Image.Image | np.ndarray | str | os.PathLike[str]
Images = Tensor | Sequence[ImageLike] | ImageLike

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


def float_to_uint8(array: np.ndarray) -> np.ndarray:
    """Float pixel arrays (0..1, or 0..255 when above 1) as uint8; other arrays unchanged."""
    if array.dtype.kind != "f":
        return array
    high = 1.0 if array.max(initial=0) <= 1.0 else 255.0
    return np.clip(np.rint(array / high * 255.0), 0, 255).astype(np.uint8)


def as_batch(images: Images, preprocess: Callable[[Image.Image], Tensor]) -> Tensor:
    """Preprocessed (B, 3, H, W) from a tensor batch, PIL images, arrays or paths."""
    if isinstance(images, Tensor):
        return images if images.ndim == 4 else images[None]
    if isinstance(images, Image.Image | np.ndarray | str | os.PathLike):
        images = [images]
    tensors = []
    for item in images:
        # In-memory images get the same decoding as files (METHODS.md section 0): EXIF orientation,
        # alpha over white, 16-bit scaled down.
        if isinstance(item, Image.Image):
            picture = to_rgb(ImageOps.exif_transpose(item))
        elif isinstance(item, np.ndarray):
            picture = to_rgb(Image.fromarray(float_to_uint8(item)))
        else:
            picture = load_image(item)
        tensors.append(preprocess(picture))
    return torch.stack(tensors)
