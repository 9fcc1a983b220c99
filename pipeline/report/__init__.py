"""``fdpipe report``: a static HTML site of an ``explain`` output that opens from ``file://``.

``scan.py`` streams the images of the output and keeps small aggregates; ``thumbnails.py`` writes
each thumbnail once (reused by the next report of the same output); ``pages.py`` writes the index,
the gallery pages (``page_size`` images each, written as the scan goes) and the failures page.
Memory stays flat in the number of rows: only one page of small strings is held at a time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from fdpipe.display import Colormap, Display, colormap
from fdpipe.errors import FdpipeError
from fdpipe.job.inputs import OUTPUT_MARKER
from fdpipe.job.reader import CurrentRows
from fdpipe.report.pages import (
    FAILURES_ON_INDEX,
    GalleryRow,
    failure_row,
    gallery_page,
    index_page,
    navigation,
    page_name,
)
from fdpipe.report.scan import Aggregates, ImageEntry, iter_images, rows_per_image, run_records
from fdpipe.report.thumbnails import Thumbnails

PAGE_SIZE = 50  # images per gallery page
SITE_MARKER = ".fdpipe-report"  # in every report folder: the next report may replace its files
# What a report writes: a folder of only these, its static files among them, is a report made
# before the marker existed.
SITE_FILES = ("index.html", "failures.html", "images.js", "page-*.html", "thumbs", ".*.tmp")
THUMBNAIL = 160  # pixels, longest side
STATIC = ("report.css", "report.js")


class ReportTargetError(FdpipeError, ValueError):
    """A report folder that holds files fdpipe did not write: they are never overwritten."""


def check_site(site: Path) -> None:
    """``site`` may be written: new, empty, or an earlier report (marked, or only its files)."""
    if site.exists() and not site.is_dir():
        raise ReportTargetError(f"{site} is a file, not a folder")
    if not site.is_dir() or (site / SITE_MARKER).is_file():
        return
    own = (*SITE_FILES, *STATIC, OUTPUT_MARKER)
    names = sorted(p.name for p in site.iterdir())
    foreign = [name for name in names if not any(Path(name).match(n) for n in own)]
    if foreign or (names and not all((site / name).is_file() for name in STATIC)):
        raise ReportTargetError(
            f"{site} is not an fdpipe report folder (it holds {', '.join((foreign or names)[:3])}"
            f"{', ...' if len(foreign or names) > 3 else ''}): choose a new or empty folder for -o"
        )


@dataclass
class SiteSummary:
    index: Path
    images: int
    failed: int
    pages: int
    thumbnails_written: int
    thumbnails_reused: int
    missing_images: int


def write_site(
    output: Path | str,
    site: Path,
    *,
    images_root: Path | None,
    page_size: int = PAGE_SIZE,
    display: Display | None = None,
    cmap: Colormap | None = None,
    options: dict[str, Any] | None = None,
) -> SiteSummary:
    """Write the report of ``output`` into ``site``; ``images_root`` None: show maps alone;
    ``options``: an object store's (``output`` a URL)."""
    cmap = cmap or colormap()
    check_site(site)
    site.mkdir(parents=True, exist_ok=True)
    (site / SITE_MARKER).touch()
    (site / OUTPUT_MARKER).touch()  # never walked as input (a report inside the image folder)
    for name in STATIC:
        source = resources.files("fdpipe.report").joinpath("static", name)
        write_text(site / name, source.read_text(encoding="utf-8"))
    # First pass, one column: how many current rows each image has, in first-seen order. After
    # a rerun an image's rows may lie in several parts; it is drawn once all have been read.
    current = CurrentRows(output, options=options)  # the current rows: worked out once
    remaining = rows_per_image(current)
    order = {path: index for index, path in enumerate(remaining)}
    pages = max(1, -(-len(order) // page_size))
    thumbnails = Thumbnails(site, THUMBNAIL, cmap, display, images_root)
    aggregates = Aggregates()
    first_failures: list[tuple[str, str, int]] = []
    pending: dict[str, Pending] = {}  # images with rows still to come (usually at most one)
    on_page: dict[int, dict[int, list[GalleryRow]]] = {}  # page -> image index -> its rows
    with (
        atomic_text(site / "failures.html") as failures,
        atomic_text(site / "images.js") as found,
    ):
        failures.write(FAILURES_HEAD.format(navigation=navigation(pages)))
        found.write("window.fdpipeImages = [\n")  # [path, top-1 class, status, page] per image
        for chunk in iter_images(current):
            merged = pending.setdefault(chunk.path, Pending(chunk.path, chunk.sha256))
            merged.add(chunk, thumbnails)
            remaining[chunk.path] -= chunk.rows
            if remaining[chunk.path] > 0:
                continue
            image = pending.pop(chunk.path).entry
            number = order[image.path] // page_size + 1
            aggregates.add(image)
            top = next((entry.class_name for entry in image.maps if entry.class_rank == 0), "")
            found.write(json.dumps([image.path, top, image.status, number]) + ",\n")
            if image.status == "failed":
                failure = (image.path, image.error or "", number)
                failures.write(failure_row(*failure))
                if len(first_failures) < FAILURES_ON_INDEX:
                    first_failures.append(failure)
            slots = on_page.setdefault(number, {})
            slots[order[image.path]] = pending_rows(image, merged)
            if len(slots) == min(page_size, len(order) - (number - 1) * page_size):
                write_page(site, number, pages, on_page.pop(number), cmap, display)
        if not order:
            write_page(site, 1, 1, {}, cmap, display)
        failures.write(FAILURES_TAIL)
        found.write("];\n")
    remove_stale_pages(site, pages)
    index = site / "index.html"
    runs = run_records(output, options)
    write_text(
        index, index_page(aggregates, runs, first_failures, pages, cmap, display, str(output))
    )
    return SiteSummary(
        index,
        aggregates.images,
        aggregates.failed,
        pages,
        thumbnails.written,
        thumbnails.reused,
        thumbnails.missing_images,
    )


FAILURES_HEAD = (
    '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>fdpipe failures</title>'
    '<link rel="stylesheet" href="report.css"></head>\n<body>\n{navigation}<h1>Failures</h1>'
    '<table id="failures"><tr><th>image</th><th>reason</th><th>page</th></tr>\n'
)
FAILURES_TAIL = "</table>\n</body></html>\n"


def write_page(
    site: Path,
    number: int,
    pages: int,
    slots: dict[int, list[GalleryRow]],
    cmap: Colormap,
    display: Display | None,
) -> None:
    """A gallery page: its images' rows in first-seen order, a column per method present."""
    rows = [row for index in sorted(slots) for row in slots[index]]
    methods = list(dict.fromkeys(method for row in rows for method in row.overlays))
    write_text(site / page_name(number), gallery_page(number, pages, rows, methods, cmap, display))


def remove_stale_pages(site: Path, pages: int) -> None:
    """Pages of an earlier, longer report of this site: no link reaches them any more."""
    for path in site.glob("page-*.html"):
        number = path.stem.removeprefix("page-")
        if number.isdigit() and int(number) > pages:
            path.unlink()


@contextmanager
def atomic_text(target: Path) -> Iterator[TextIO]:
    """A text file written under a temporary name and renamed when complete."""
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with temp.open("w", encoding="utf-8") as handle:
            yield handle
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def write_text(target: Path, text: str) -> None:
    with atomic_text(target) as handle:
        handle.write(text)


@dataclass
class Pending:
    """An image whose rows are being read: its rows (maps dropped once drawn) and thumbnails."""

    path: str
    sha256: str | None
    photo: str | None = None
    overlays: list[str] = field(default_factory=list)  # aligned with entry.maps

    def __post_init__(self) -> None:
        self.entry = ImageEntry(self.path, self.sha256, "ok")

    def add(self, chunk: ImageEntry, thumbnails: Thumbnails) -> None:
        photo, overlays = thumbnails.for_image(chunk)
        self.photo = self.photo or photo
        self.entry.rows += chunk.rows
        if chunk.status == "failed":
            self.entry.status, self.entry.error = "failed", chunk.error
        for index, entry in enumerate(chunk.maps):
            self.entry.maps.append(replace(entry, native=NO_MAP))
            self.overlays.append(overlays[index])


NO_MAP = np.zeros((0, 0), dtype=np.float32)  # a drawn row keeps its labels, not its map


def pending_rows(image: ImageEntry, merged: Pending) -> list[GalleryRow]:
    """One row per class rank of ``image`` (each method's overlay), or one for a failure."""
    if image.status == "failed":
        return [GalleryRow(image.path, "failed", None, error=image.error)]
    rows: dict[int, GalleryRow] = {}
    for entry, overlay in zip(image.maps, merged.overlays, strict=True):
        row = rows.setdefault(
            entry.class_rank,
            GalleryRow(
                image.path,
                "ok",
                merged.photo,
                entry.class_rank,
                entry.class_name,
                entry.probability,
            ),
        )
        row.overlays[entry.method] = overlay
    return [rows[rank] for rank in sorted(rows)]


__all__ = [
    "PAGE_SIZE",
    "SITE_MARKER",
    "THUMBNAIL",
    "Pending",
    "ReportTargetError",
    "SiteSummary",
    "check_site",
    "write_site",
]
