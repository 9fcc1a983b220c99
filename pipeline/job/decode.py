"""Reading a job's images: each entry's bytes from its source, hashed, decoded and preprocessed on
worker threads, in input order, a bounded number ahead of the model, then grouped into batches of
decodable images."""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from time import perf_counter

from fdpipe.export.preprocessing import AnyPreprocess
from fdpipe.images import MAX_PIXELS, ImageDecodeError, load_image_sized
from fdpipe.job.inputs import MAX_FILE_BYTES, Entry, EntryError, Source
from fdpipe.job.schema import ImageInfo
from torch import Tensor


@dataclass
class DecodedImage:
    info: ImageInfo
    tensor: Tensor | None  # preprocessed (3, H, W); None when decoding failed
    error: str | None
    seconds: float
    target: str | None = None  # the manifest's class for this image (--target-column)


def decode(
    entry: Entry,
    source: Source,
    preprocess: AnyPreprocess,
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_FILE_BYTES,
) -> DecodedImage:
    """Read, hash, decode and preprocess one entry; any problem with it becomes an error message."""
    start = perf_counter()
    info = ImageInfo(entry.key, None, None, None)
    try:
        data = source.open(entry, max_bytes)
        info.sha256 = hashlib.sha256(data).hexdigest()
        picture, (info.width, info.height) = load_image_sized(data, max_pixels)
        tensor = preprocess(picture)
    except (EntryError, ImageDecodeError) as exc:
        return DecodedImage(info, None, str(exc), perf_counter() - start)
    except OSError as exc:
        return DecodedImage(info, None, f"cannot read file: {exc}", perf_counter() - start)
    except Exception as exc:  # a decoder bug on one odd file must not stop a dataset run
        message = f"unexpected error while decoding: {type(exc).__name__}: {exc}"
        return DecodedImage(info, None, message, perf_counter() - start)
    return DecodedImage(info, tensor, None, perf_counter() - start, entry.target)


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


__all__ = ["DecodedImage", "batches", "decode", "ordered_map"]
