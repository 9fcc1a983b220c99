"""``fdpipe render``: heat-map overlays of output rows, and contact sheets of methods per image."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from fdpipe.images import ImageDecodeError, load_image
from fdpipe.job.inputs import OUTPUT_MARKER
from fdpipe.job.reader import MapRow
from fdpipe.kernels.postprocess import place_map
from PIL import Image, ImageDraw, ImageFont, ImageOps

log = logging.getLogger("fdpipe.render")

TILE = 224  # contact sheet cell, pixels
LABEL = 18  # label strip above each cell, pixels


def jet(values: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8 with the classic jet colormap (blue -> red)."""
    x = np.clip(values, 0.0, 1.0)[..., None] * 4.0
    rgb = np.clip(1.5 - np.abs(x - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def overlay(
    image: Image.Image,
    native: np.ndarray,
    alpha: float = 0.5,
    box: tuple[float, float, float, float] | None = None,
) -> Image.Image:
    """The map brought to the image's size (METHODS.md section 1, step 7) over the part the
    model saw (``box``: a centre crop; default the whole image), coloured, blended."""
    full = place_map(torch.from_numpy(native), (image.height, image.width), box).numpy()
    picture = image.convert("RGB")
    blended = Image.blend(picture, Image.fromarray(jet(full)), alpha)
    if box is None:
        return blended
    left, top = max(0, round(box[0])), max(0, round(box[1]))  # outside the crop: the photo
    right, bottom = min(picture.width, round(box[2])), min(picture.height, round(box[3]))
    picture.paste(blended.crop((left, top, right, bottom)), (left, top))
    return picture


def file_stem(image_path: str) -> str:
    return Path(image_path.lstrip("/")).with_suffix("").as_posix().replace("/", "__")


def overlay_path(image_path: str, method: str, rank: int) -> Path:
    """Where an overlay goes, relative to ``--to``: the input tree mirrored, the image's whole
    name kept (``a/b.jpg`` -> ``a/b.jpg.gradcam.rank0.png``), so no two rows share a file."""
    parts = [
        "_.." if part == ".." else part
        for part in PurePosixPath(image_path).parts
        if part not in ("/", ".")
    ]
    label = method.replace("/", "_")
    return Path(*parts[:-1], f"{parts[-1]}.{label}.rank{rank}.png")


def pictures_with_rows(
    rows: Iterable[MapRow], root: Path, limit: int | None, missing: list[str] | None = None
) -> Iterator[tuple[str, Image.Image, Iterator[MapRow]]]:
    """Each image of ``rows`` (contiguous per image), decoded once; at most ``limit`` images.

    An image that cannot be read any more (moved, deleted, damaged) is logged, added to
    ``missing`` and skipped: the others are still rendered.
    """
    grouped = itertools.groupby(rows, key=lambda row: row.image_path)
    for image_path, image_rows in itertools.islice(grouped, limit):
        try:
            picture = load_image(root / image_path)
        except (ImageDecodeError, OSError) as exc:
            log.warning("cannot render %s: %s", image_path, exc)
            if missing is not None:
                missing.append(image_path)
            continue
        yield image_path, picture, image_rows


def prepare_target(to: Path) -> None:
    """Create ``to``, marked as fdpipe output so that a walk of the images never takes it in."""
    to.mkdir(parents=True, exist_ok=True)
    (to / OUTPUT_MARKER).touch()


def render_overlays(
    rows: Iterable[MapRow],
    root: Path,
    to: Path,
    *,
    alpha: float = 0.5,
    limit: int | None = None,
    missing: list[str] | None = None,
) -> list[Path]:
    """One PNG per row at ``overlay_path`` under ``to``; at most ``limit`` images.

    Returns the files written, each once (a row repeated in the output is not drawn twice).
    """
    prepare_target(to)
    written: dict[Path, None] = {}
    for image_path, picture, image_rows in pictures_with_rows(rows, root, limit, missing):
        for row in image_rows:
            target = to / overlay_path(image_path, row.method, row.class_rank)
            if target in written:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            overlay(picture, row.native, alpha, row.box).save(target)
            written[target] = None
    return list(written)


def render_sheets(
    rows: Iterable[MapRow],
    root: Path,
    to: Path,
    *,
    alpha: float = 0.5,
    limit: int | None = None,
    per_sheet: int = 16,
    missing: list[str] | None = None,
) -> list[Path]:
    """Contact sheets: one line per (image, class), the photo then each method's overlay."""
    prepare_target(to)
    lines = []
    for _, picture, image_rows in pictures_with_rows(rows, root, limit, missing):
        by_rank = itertools.groupby(
            sorted(image_rows, key=lambda r: r.class_rank), lambda r: r.class_rank
        )
        for _, ranked in by_rank:
            lines.append(sheet_line(picture, list(ranked), alpha))
    written = []
    for page, start in enumerate(range(0, len(lines), per_sheet)):
        target = to / f"sheet-{page:04d}.png"
        stack(lines[start : start + per_sheet]).save(target)
        written.append(target)
    return written


def sheet_line(picture: Image.Image, rows: list[MapRow], alpha: float) -> Image.Image:
    first = rows[0]
    title = f"{Path(first.image_path).name}: {first.class_name} ({first.probability:.2f})"
    cells = [labelled(picture, title)]
    cells += [labelled(overlay(picture, row.native, alpha, row.box), row.method) for row in rows]
    line = Image.new("RGB", (TILE * len(cells), TILE + LABEL), "white")
    for column, cell in enumerate(cells):
        line.paste(cell, (column * TILE, 0))
    return line


def labelled(picture: Image.Image, text: str) -> Image.Image:
    cell = Image.new("RGB", (TILE, TILE + LABEL), "white")
    cell.paste(ImageOps.pad(picture, (TILE, TILE), color="white"), (0, LABEL))
    ImageDraw.Draw(cell).text((3, 2), text, fill="black", font=ImageFont.load_default(12))
    return cell


def stack(lines: list[Image.Image]) -> Image.Image:
    sheet = Image.new(
        "RGB", (max(line.width for line in lines), sum(line.height for line in lines))
    )
    sheet.paste("white", (0, 0, *sheet.size))
    top = 0
    for line in lines:
        sheet.paste(line, (0, top))
        top += line.height
    return sheet


__all__ = [
    "file_stem",
    "jet",
    "overlay",
    "overlay_path",
    "render_overlays",
    "render_sheets",
    "sheet_line",
]
