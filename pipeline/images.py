"""Decoding any image (file, PIL image, array) into the RGB picture METHODS.md section 0 starts
from, and a batch of them into the model's preprocessed input tensor."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from fdpipe.errors import FdpipeError
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

ImageLike = Image.Image | np.ndarray | str | os.PathLike[str]
Images = Tensor | Sequence[ImageLike] | ImageLike

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)


class ImageDecodeError(FdpipeError, ValueError):
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


# Decoded pixels allowed per image: ~120 MB of RGB, a few copies of it at most while converting.
# JPEGs above it are decoded at a reduced scale (1/2, 1/4, 1/8); other formats are refused.
MAX_PIXELS = 40_000_000


def load_image(path: str | os.PathLike[str], max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open, apply EXIF orientation, convert to RGB. Raises ImageDecodeError with a reason."""
    return load_image_sized(path, max_pixels)[0]


def load_image_sized(
    path: str | os.PathLike[str] | BinaryIO | bytes, max_pixels: int = MAX_PIXELS
) -> tuple[Image.Image, tuple[int, int]]:
    """``load_image`` and the file's full (width, height) after EXIF orientation; ``path`` may
    also be an open file or the file's bytes.

    At most ``max_pixels`` pixels are decoded: the header's size is checked before any pixel is
    read, so memory per image stays bounded whatever the file claims. A JPEG decoded at a reduced
    scale is smaller than the full size.
    """
    source = Path(path) if isinstance(path, str | os.PathLike) else path
    try:
        if isinstance(source, bytes):
            size, source = len(source), io.BytesIO(source)
        elif isinstance(source, Path):
            size = source.stat().st_size
        else:
            size = os.fstat(source.fileno()).st_size
        if size == 0:
            raise ImageDecodeError("empty file (0 bytes)")
        # Image.open reads only the header. The check is ours, not Pillow's decompression-bomb
        # warning filter, because images are decoded on worker threads.
        with Image.open(source) as opened:
            width, height = opened.size
            if width * height > max_pixels and opened.format == "JPEG":
                # libjpeg decodes at 1/2, 1/4 or 1/8 scale: the mildest one within the bound
                scale = next(
                    (s for s in (2, 4, 8) if -(-width // s) * -(-height // s) <= max_pixels), 8
                )
                opened.draft("RGB", (width // scale, height // scale))
            if opened.size[0] * opened.size[1] > max_pixels:
                raise ImageDecodeError(
                    f"image too large: {width}x{height} pixels exceeds the limit of "
                    f"{max_pixels} (--max-pixels)"
                )
            opened.load()
            oriented = ImageOps.exif_transpose(opened)
            turned = oriented.size != opened.size
            return to_rgb(oriented), (height, width) if turned else (width, height)
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
