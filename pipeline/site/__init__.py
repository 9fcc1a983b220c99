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
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TextIO

from fdpipe.display import Colormap, Display, colormap
from fdpipe.site.pages import (
    FAILURES_ON_INDEX,
    GalleryRow,
    failure_row,
    gallery_page,
    index_page,
    navigation,
    page_name,
)
from fdpipe.site.scan import Aggregates, ImageEntry, count_images, iter_images, run_records
from fdpipe.site.thumbnails import Thumbnails

PAGE_SIZE = 50  # images per gallery page
THUMBNAIL = 160  # pixels, longest side
STATIC = ("report.css", "report.js")


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
    output: Path,
    site: Path,
    *,
    images_root: Path | None,
    page_size: int = PAGE_SIZE,
    display: Display | None = None,
    cmap: Colormap | None = None,
) -> SiteSummary:
    """Write the report of ``output`` into ``site``; ``images_root`` None: show maps alone."""
    cmap = cmap or colormap()
    site.mkdir(parents=True, exist_ok=True)
    for name in STATIC:
        source = resources.files("fdpipe.site").joinpath("static", name)
        write_text(site / name, source.read_text(encoding="utf-8"))
    pages = max(1, -(-count_images(output) // page_size))  # a first pass over one column
    thumbnails = Thumbnails(site, THUMBNAIL, cmap, display, images_root)
    aggregates = Aggregates()
    first_failures: list[tuple[str, str, int]] = []
    page: list[GalleryRow] = []
    methods: dict[str, None] = {}
    number = 1
    with (
        atomic_text(site / "failures.html") as failures,
        atomic_text(site / "images.js") as found,
    ):
        failures.write(FAILURES_HEAD.format(navigation=navigation(pages)))
        found.write("window.fdpipeImages = [\n")  # [path, top-1 class, status, page] per image
        for image in iter_images(output):
            aggregates.add(image)
            top = next((entry.class_name for entry in image.maps if entry.class_rank == 0), "")
            found.write(json.dumps([image.path, top, image.status, number]) + ",\n")
            if image.status == "failed":
                failure = (image.path, image.error or "", number)
                failures.write(failure_row(*failure))
                if len(first_failures) < FAILURES_ON_INDEX:
                    first_failures.append(failure)
            page += gallery_rows(image, thumbnails)
            methods.update(dict.fromkeys(entry.method for entry in image.maps))
            if aggregates.images == number * page_size:
                write_page(site, number, pages, page, list(methods), cmap, display)
                page, methods, number = [], {}, number + 1
        if page or aggregates.images == 0:
            write_page(site, number, pages, page, list(methods), cmap, display)
        failures.write(FAILURES_TAIL)
        found.write("];\n")
    remove_stale_pages(site, pages)
    index = site / "index.html"
    runs = run_records(output)
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
    rows: list[GalleryRow],
    methods: list[str],
    cmap: Colormap,
    display: Display | None,
) -> None:
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


def gallery_rows(image: ImageEntry, thumbnails: Thumbnails) -> list[GalleryRow]:
    """One row per class rank of ``image`` (each method's overlay), or one for a failure."""
    photo, overlays = thumbnails.for_image(image)
    if image.status == "failed":
        return [GalleryRow(image.path, "failed", photo, error=image.error)]
    rows: dict[int, GalleryRow] = {}
    for index, entry in enumerate(image.maps):
        row = rows.setdefault(
            entry.class_rank,
            GalleryRow(
                image.path, "ok", photo, entry.class_rank, entry.class_name, entry.probability
            ),
        )
        row.overlays[entry.method] = overlays[index]
    return [rows[rank] for rank in sorted(rows)]


__all__ = ["PAGE_SIZE", "THUMBNAIL", "SiteSummary", "gallery_rows", "write_site"]
