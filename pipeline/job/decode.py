"""Reading a job's images: each entry's bytes from its source, hashed, decoded and preprocessed on
worker threads, in input order, a bounded number ahead of the model, then grouped into batches of
decodable images.

With ``--decode device`` (``auto`` on a GPU) the workers only read, hash and check the headers:
plain JPEGs stay encoded (``DecodedImage.data``) and each batch of them is decoded together by
the model's device (nvJPEG on CUDA: TorchCodec's ``decode_jpeg`` where it is installed, the
``decode`` extra, else torchvision's) and preprocessed there (``Preprocess.from_pixels``); every
other file, and any JPEG the device decoder refuses, goes through the CPU decoders (PIL) as
before, with the same failed rows.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from time import perf_counter

import torch
from fdpipe.export.preprocessing import AnyPreprocess, Preprocess
from fdpipe.images import MAX_PIXELS, ImageDecodeError, load_image_sized
from fdpipe.job.inputs import MAX_FILE_BYTES, Entry, EntryError, Source
from fdpipe.job.schema import ImageInfo
from PIL import Image
from torch import Tensor

# torchvision 0.29 deprecates its decoders for TorchCodec's; without TorchCodec they still work.
warnings.filterwarnings(
    "ignore", "The image decoding and encoding capabilities of TorchVision", DeprecationWarning
)
EXIF_ORIENTATION = 0x0112
JPEG_END = b"\xff\xd9"


@dataclass
class DecodedImage:
    info: ImageInfo
    tensor: Tensor | None  # preprocessed (3, H, W); None when decoding failed or is pending
    error: str | None
    seconds: float
    target: str | None = None  # the manifest's class for this image (--target-column)
    data: bytes | None = None  # a JPEG left for the device decoder (``decode_on_device``)


def decode(
    entry: Entry,
    source: Source,
    preprocess: AnyPreprocess,
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_FILE_BYTES,
    leave_jpegs: bool = False,
) -> DecodedImage:
    """Read, hash, decode and preprocess one entry; any problem with it becomes an error message.
    ``leave_jpegs``: a JPEG the device decoder takes (``device_jpeg``) is left encoded."""
    start = perf_counter()
    info = ImageInfo(entry.key, None, None, None)
    try:
        data = source.open(entry, max_bytes)
        info.sha256 = hashlib.sha256(data).hexdigest()
        if leave_jpegs and (size := device_jpeg(data, max_pixels)):
            info.width, info.height = size
            return DecodedImage(info, None, None, perf_counter() - start, entry.target, data)
        tensor = cpu_decode(data, info, preprocess, max_pixels)
    except (EntryError, ImageDecodeError) as exc:
        return DecodedImage(info, None, str(exc), perf_counter() - start)
    except OSError as exc:
        return DecodedImage(info, None, f"cannot read file: {exc}", perf_counter() - start)
    except Exception as exc:  # a decoder bug on one odd file must not stop a dataset run
        message = f"unexpected error while decoding: {type(exc).__name__}: {exc}"
        return DecodedImage(info, None, message, perf_counter() - start)
    return DecodedImage(info, tensor, None, perf_counter() - start, entry.target)


def cpu_decode(data: bytes, info: ImageInfo, preprocess: AnyPreprocess, max_pixels: int) -> Tensor:
    """PIL's decoding (EXIF orientation, any mode to RGB, reduced-scale JPEGs) and preprocessing;
    the full size goes to ``info``."""
    picture, (info.width, info.height) = load_image_sized(data, max_pixels)
    return preprocess(picture)


def device_jpeg(data: bytes, max_pixels: int) -> tuple[int, int] | None:
    """(width, height) of a JPEG that the device decoder gives as PIL would: colour (YCbCr) or
    greyscale, upright (no EXIF rotation), complete (ends with its end marker: a truncated file
    is PIL's to fail) and within ``max_pixels`` (larger ones PIL decodes at a reduced scale).
    None for anything else, which the CPU decoders take. Reads the header only."""
    if not data.startswith(b"\xff\xd8") or not data.endswith(JPEG_END):
        return None
    try:
        with Image.open(io.BytesIO(data)) as opened:
            upright = opened.getexif().get(EXIF_ORIENTATION, 1) == 1
            width, height = opened.size
            if opened.format == "JPEG" and opened.mode in ("RGB", "L") and upright:
                return (width, height) if width * height <= max_pixels else None
    except Exception:  # a header PIL cannot read: the CPU path gives its error row
        return None
    return None


Decoded = list[Tensor] | Tensor  # a batch's pixels, or one image's


@dataclass(frozen=True)
class JpegDecoder:
    """A batched JPEG decoder to RGB uint8 (3, H, W) on a device (nvJPEG on CUDA)."""

    name: str  # the package and its version, recorded in the run metadata
    decode: Callable[[list[Tensor] | Tensor, torch.device], Decoded]


@cache
def jpeg_decoder() -> JpegDecoder:
    """TorchCodec's decoder where it is installed and loads (the maintained nvJPEG path), else
    torchvision's (deprecated since 0.29, still working)."""
    return torchcodec_decoder() or torchvision_decoder()


def torchcodec_decoder() -> JpegDecoder | None:
    try:
        from torchcodec.decoders import decode_jpeg
    except (ImportError, OSError, RuntimeError):  # absent, or its native library does not load
        return None

    def decode(data: list[Tensor] | Tensor, device: torch.device) -> Decoded:
        pixels: Decoded = decode_jpeg(data, mode="RGB", device=device)
        return pixels

    return JpegDecoder(f"torchcodec {importlib.metadata.version('torchcodec')}", decode)


def torchvision_decoder() -> JpegDecoder:
    from torchvision.io import ImageReadMode, decode_jpeg

    def decode(data: list[Tensor] | Tensor, device: torch.device) -> Decoded:
        pixels: Decoded = decode_jpeg(data, ImageReadMode.RGB, device=device)
        return pixels

    return JpegDecoder(f"torchvision {importlib.metadata.version('torchvision')}", decode)


def decode_on_device(
    images: list[DecodedImage],
    preprocess: AnyPreprocess,
    device: torch.device,
    max_pixels: int = MAX_PIXELS,
    decoder: JpegDecoder | None = None,
) -> None:
    """Decode and preprocess on ``device`` the JPEGs ``decode`` left encoded, in one batched call
    of ``decoder`` (``jpeg_decoder()``);
    a batch the decoder refuses is retried image by image, and an image it still refuses (or
    decodes to another size than its header's) goes through the CPU decoders, failing as there.
    Each image's ``tensor`` ends on ``device``; its ``seconds`` gain its share of the batch."""
    waiting = [image for image in images if image.data is not None]
    if not waiting:
        return
    assert isinstance(preprocess, Preprocess)  # checked by the setup (``decode_device``)
    start = perf_counter()
    blobs = [torch.frombuffer(bytearray(image.data), dtype=torch.uint8) for image in waiting]  # type: ignore[arg-type]
    decoder = decoder or jpeg_decoder()
    pixels: list[Tensor | None]
    try:
        pixels = list(decoder.decode(blobs, device))
    except Exception:  # one bad file fails the whole batched call: find it
        pixels = [_decode_one(decoder, blob, device) for blob in blobs]
    share = (perf_counter() - start) / len(waiting)
    for image, picture in zip(waiting, pixels, strict=True):
        start = perf_counter()
        data, image.data = image.data, None
        size = (3, image.info.height, image.info.width)
        try:
            if picture is not None and tuple(picture.shape) == size:
                image.tensor = preprocess.from_pixels(picture)
            else:
                image.tensor = cpu_decode(data, image.info, preprocess, max_pixels).to(device)  # type: ignore[arg-type]
        except ImageDecodeError as exc:
            image.error = str(exc)
        except Exception as exc:  # as ``decode``: one odd file must not stop the run
            image.error = f"unexpected error while decoding: {type(exc).__name__}: {exc}"
        image.seconds += share + perf_counter() - start


def _decode_one(decoder: JpegDecoder, blob: Tensor, device: torch.device) -> Tensor | None:
    try:
        pixels = decoder.decode(blob, device)
    except Exception:  # the decoders raise RuntimeError, ValueError...: PIL's path says why
        return None
    return pixels if isinstance(pixels, Tensor) else None


def ordered_map(
    fn: Callable[[Entry], DecodedImage], items: Iterable[Entry], workers: int, ahead: int
) -> Iterator[DecodedImage]:
    """``map(fn, items)`` on a thread pool, in order, never more than ``ahead`` results held."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fdpipe-decode") as pool:
        queue: deque[Future[DecodedImage]] = deque()
        for item in items:
            queue.append(pool.submit(fn, item))
            if len(queue) >= ahead:
                yield queue.popleft().result()
        while queue:
            yield queue.popleft().result()


def batches(images: Iterable[DecodedImage], size: int) -> Iterator[list[DecodedImage]]:
    """Groups holding ``size`` decodable images; failed ones ride along in input order."""
    group: list[DecodedImage] = []
    usable = 0
    for image in images:
        group.append(image)
        usable += image.error is None
        if usable == size:
            yield group
            group, usable = [], 0
    if group:
        yield group


__all__ = [
    "DecodedImage",
    "JpegDecoder",
    "batches",
    "cpu_decode",
    "decode",
    "decode_on_device",
    "device_jpeg",
    "jpeg_decoder",
    "ordered_map",
    "torchcodec_decoder",
    "torchvision_decoder",
]
