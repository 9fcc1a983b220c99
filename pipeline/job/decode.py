"""Reading a job's images: hash, decode and preprocess on worker threads, in input order, a
bounded number ahead of the model, then grouped into batches of decodable images."""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter

from fdpipe.export.preprocessing import AnyPreprocess
from fdpipe.images import MAX_PIXELS, ImageDecodeError, load_image_sized
from fdpipe.job.inputs import InputItem
from fdpipe.job.schema import ImageInfo
from torch import Tensor

MAX_FILE_BYTES = 1 << 30  # an image file above 1 GiB is refused before it is hashed


@dataclass
class DecodedImage:
    info: ImageInfo
    tensor: Tensor | None  # preprocessed (3, H, W); None when decoding failed
    error: str | None
    seconds: float
    target: str | None = None  # the manifest's class for this image (--target-column)


def open_regular(path: Path, max_bytes: int) -> io.BufferedReader:
    """``path`` opened for reading if it is a regular file of at most ``max_bytes`` bytes.

    FIFOs, devices (a symlink to /dev/zero) and sockets would block or never end: they are refused
    from their ``stat`` before a byte is read, and opened non-blocking in case one replaced the
    file since.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise ImageDecodeError("not a regular file (a FIFO, device or socket): not read")
        if status.st_size > max_bytes:
            raise ImageDecodeError(
                f"file too large: {status.st_size} bytes exceeds the limit of {max_bytes}"
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def decode(
    item: InputItem,
    preprocess: AnyPreprocess,
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_FILE_BYTES,
) -> DecodedImage:
    """Hash, decode and preprocess one file; any problem with it becomes an error message."""
    start = perf_counter()
    info = ImageInfo(item.key, None, None, None)
    try:
        with open_regular(item.path, max_bytes) as fh:
            info.sha256 = hashlib.file_digest(fh, "sha256").hexdigest()
            fh.seek(0)
            picture, (info.width, info.height) = load_image_sized(fh, max_pixels)
        tensor = preprocess(picture)
    except ImageDecodeError as exc:
        return DecodedImage(info, None, str(exc), perf_counter() - start)
    except OSError as exc:
        return DecodedImage(info, None, f"cannot read file: {exc}", perf_counter() - start)
    except Exception as exc:  # a decoder bug on one odd file must not stop a dataset run
        message = f"unexpected error while decoding: {type(exc).__name__}: {exc}"
        return DecodedImage(info, None, message, perf_counter() - start)
    return DecodedImage(info, tensor, None, perf_counter() - start, item.target)


def ordered_map(
    fn: Callable[[InputItem], DecodedImage], items: Iterable[InputItem], workers: int, ahead: int
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


__all__ = ["MAX_FILE_BYTES", "DecodedImage", "batches", "decode", "open_regular", "ordered_map"]
