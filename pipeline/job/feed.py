"""Feeding the device: each batch's images made ready on the model's GPU on a stream of their
own (JPEGs decoded there, host tensors copied from pinned memory with ``non_blocking``) while
the GPU still computes the batch before.

The local engine holds one batch back (``one_ahead``): it sends batch n + 1 (``Feeder.send``),
then explains batch n, whose tensors the compute stream waits for (``Sent.wait``: a CUDA event,
not a host synchronisation). Off a GPU there is no stream and nothing to copy: the same loop runs
with every step in line, which is how the CPU tests cover it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from fdpipe.job.decode import DecodedImage
from torch import Tensor

T = TypeVar("T")


@dataclass
class Sent:
    """A batch in flight to the device: ``wait`` before its tensors are read."""

    tensors: list[Tensor] = field(default_factory=list)  # made on the copy stream
    event: torch.cuda.Event | None = None  # recorded there once they are ready

    def wait(self) -> None:
        """The current (compute) stream waits for the copy stream's work, and the tensors are
        marked as used there, so the allocator does not reuse them while the compute reads."""
        if self.event is None or not self.tensors:  # nothing sent: a batch that all failed
            return
        current = torch.cuda.current_stream(self.tensors[0].device)
        current.wait_event(self.event)
        for tensor in self.tensors:
            tensor.record_stream(current)


class Feeder:
    """Makes a batch's images ready on ``device``: on CUDA, on a copy stream; else in line."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def send(
        self, images: list[DecodedImage], decode: Callable[[list[DecodedImage]], None] | None
    ) -> Sent:
        """``decode`` (the device decoder's step) then the host tensors' copy, on the copy
        stream; each image's tensor becomes its device tensor (a view of one batched copy)."""
        with self._on_stream():
            if decode is not None:
                decode(images)
            if self.stream is None:
                return Sent()
            self._copy(
                [i for i in images if i.tensor is not None and i.tensor.device.type == "cpu"]
            )
            event = torch.cuda.Event()
            event.record(self.stream)
        return Sent([i.tensor for i in images if i.tensor is not None], event)

    def _on_stream(self) -> AbstractContextManager[object]:
        return nullcontext() if self.stream is None else torch.cuda.stream(self.stream)

    def _copy(self, images: list[DecodedImage]) -> None:
        """One pinned host batch per shape, copied with ``non_blocking`` (a user's callable
        preprocess may give other shapes: ``explain_usable`` then refuses them as before)."""
        shapes: dict[tuple[int, ...], list[DecodedImage]] = {}
        for image in images:
            shapes.setdefault(tuple(image.tensor.shape), []).append(image)  # type: ignore[union-attr]
        for shape, same in shapes.items():
            dtype = same[0].tensor.dtype  # type: ignore[union-attr]
            host = torch.empty((len(same), *shape), dtype=dtype, pin_memory=True)
            torch.stack([image.tensor for image in same], out=host)  # type: ignore[misc]
            batch = host.to(self.device, non_blocking=True)
            for b, image in enumerate(same):
                image.tensor = batch[b]


def one_ahead(items: Iterable[T]) -> Iterator[tuple[T, T | None]]:
    """(item, the next one or None): the next batch is at hand while this one runs."""
    iterator = iter(items)
    current = next(iterator, None)
    while current is not None:
        following = next(iterator, None)
        yield current, following
        current = following


__all__ = ["Feeder", "Sent", "one_ahead"]
