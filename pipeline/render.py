"""``fdpipe render``: heat-map overlays of output rows, and contact sheets of methods per image."""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from fdpipe.display import Colormap, Display, colormap, display_for
from fdpipe.errors import FdpipeError
from fdpipe.images import ImageDecodeError, load_image
from fdpipe.job.inputs import OUTPUT_MARKER, key_file
from fdpipe.job.reader import MapRow
from fdpipe.kernels.postprocess import place_map
from PIL import Image, ImageDraw, ImageFont, ImageOps

log = logging.getLogger("fdpipe.render")

TILE = 224  # contact sheet cell, pixels
LABEL = 18  # label strip above each cell, pixels
LEGEND = 40  # colour bar strip under a sheet, pixels
DIM = 0.4  # brightness of the grey photo under a weighted (pixel-level) display


def overlay(
    image: Image.Image,
    native: np.ndarray,
    alpha: float = 0.5,
    box: tuple[float, float, float, float] | None = None,
    display: Display | None = None,
    cmap: Colormap | None = None,
    frame: tuple[int, int] | None = None,
) -> Image.Image:
    """The map brought to the image's size (METHODS.md section 1, step 7) over the part the
    model saw (``box``: a centre crop in pixels of an image of ``frame`` (H, W), default this
    one; default the whole image), put through the display normalisation, coloured and blended
    with opacity ``alpha``; a weighted display blends over the dimmed grey photo with opacity
    ``2 * alpha * value`` (the value at 0.5)."""
    display = display or Display()
    size = (image.height, image.width)
    full = place_map(torch.from_numpy(native), size, box, frame).numpy()
    shown = display.apply(full)
    heat = (cmap or colormap())(shown).astype(np.float32)
    picture = image.convert("RGB")
    if display.weighted:
        photo = np.asarray(picture.convert("L").convert("RGB"), dtype=np.float32) * DIM
        weight = np.minimum(2.0 * alpha * shown, 1.0)[..., None]
    else:
        photo = np.asarray(picture, dtype=np.float32)
        weight = np.full((1, 1, 1), alpha, dtype=np.float32)
    blended = Image.fromarray((photo * (1.0 - weight) + heat * weight + 0.5).astype(np.uint8))
    if box is None:
        return blended
    sy, sx = (image.height / frame[0], image.width / frame[1]) if frame else (1.0, 1.0)
    left, top = max(0, round(box[0] * sx)), max(0, round(box[1] * sy))  # outside: the photo
    right = min(picture.width, round(box[2] * sx))
    bottom = min(picture.height, round(box[3] * sy))
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
            picture = load_image(key_file(root, image_path))
        except (ImageDecodeError, OSError) as exc:
            log.warning("cannot render %s: %s", image_path, exc)
            if missing is not None:
                missing.append(image_path)
            continue
        yield image_path, picture, image_rows


class Target:
    """A render folder, marked as fdpipe output (a walk of the images never takes it in). Its
    marker lists the files rendered there: only those are written over; a file of the same
    name that fdpipe did not write is kept, and the picture goes to ``<name>~<n>.png``."""

    def __init__(self, to: Path) -> None:
        to.mkdir(parents=True, exist_ok=True)
        self.to, self.marker = to, to / OUTPUT_MARKER
        if os.path.lexists(self.marker) and (
            self.marker.is_symlink() or not self.marker.is_file()
        ):  # a link would take the list elsewhere, a FIFO would block: not fdpipe's folder
            raise FdpipeError(
                f"--to {to}: its {OUTPUT_MARKER} is not a regular file (a link, FIFO or "
                "folder), so fdpipe did not make it: choose another"
            )
        try:
            listed = self.marker.read_text("utf-8").splitlines() if self.marker.is_file() else None
        except (OSError, UnicodeDecodeError):
            listed = None
        # An empty marker: a folder an earlier fdpipe rendered into, whose files are its own.
        self.legacy = listed == []
        self.ours = set(listed or [])
        self.marker.touch()

    def path(self, name: str) -> Path:
        """Where to write ``name`` (a relative path) without overwriting someone's file."""
        wanted = candidate = self.to / name
        n = 0
        while os.path.lexists(candidate) and not self.owns(candidate):
            n += 1
            candidate = wanted.with_name(f"{wanted.stem}~{n}{wanted.suffix}")
        if candidate != wanted:
            log.warning("%s exists and was not rendered by fdpipe: kept; written as %s",
                        wanted, candidate.name)  # fmt: skip
        candidate.parent.mkdir(parents=True, exist_ok=True)
        return candidate

    def owns(self, path: Path) -> bool:
        if path.is_symlink():  # never written through: the link's target is not fdpipe's
            return False
        return self.legacy or path.relative_to(self.to).as_posix() in self.ours

    def wrote(self, path: Path) -> None:
        name = path.relative_to(self.to).as_posix()
        if name not in self.ours and not self.legacy:
            self.ours.add(name)
            with self.marker.open("a", encoding="utf-8") as fh:
                fh.write(name + "\n")


def render_overlays(
    rows: Iterable[MapRow],
    root: Path,
    to: Path,
    *,
    alpha: float = 0.5,
    limit: int | None = None,
    missing: list[str] | None = None,
    display: Display | None = None,
    cmap: Colormap | None = None,
) -> list[Path]:
    """One PNG per row at ``overlay_path`` under ``to``; at most ``limit`` images; ``display``
    None: chosen per method (``display_for``).

    Returns the files written, each once (a row repeated in the output is not drawn twice).
    """
    folder = Target(to)
    written: dict[Path, Path] = {}  # wanted name -> the file written
    for image_path, picture, image_rows in pictures_with_rows(rows, root, limit, missing):
        for row in image_rows:
            wanted = overlay_path(image_path, row.method, row.class_rank)
            if wanted in written:
                continue
            target = folder.path(wanted.as_posix())
            shown = display_for(row.method, display)
            overlay(picture, row.native, alpha, row.box, shown, cmap, row.frame).save(target)
            folder.wrote(target)
            written[wanted] = target
    return list(written.values())


def render_sheets(
    rows: Iterable[MapRow],
    root: Path,
    to: Path,
    *,
    alpha: float = 0.5,
    limit: int | None = None,
    per_sheet: int = 16,
    missing: list[str] | None = None,
    display: Display | None = None,
    cmap: Colormap | None = None,
) -> list[Path]:
    """Contact sheets: one line per (image, class), the photo then each method's overlay; a
    colour bar under each sheet says the colormap and each method's display."""
    folder = Target(to)
    lines = []
    methods: dict[str, None] = {}  # in order of appearance
    for _, picture, image_rows in pictures_with_rows(rows, root, limit, missing):
        by_rank = itertools.groupby(
            sorted(image_rows, key=lambda r: r.class_rank), lambda r: r.class_rank
        )
        for _, ranked in by_rank:
            ranked_rows = list(ranked)
            methods.update(dict.fromkeys(row.method for row in ranked_rows))
            lines.append(sheet_line(picture, ranked_rows, alpha, display, cmap))
    written = []
    key = legend(list(methods), display, cmap or colormap())
    for page, start in enumerate(range(0, len(lines), per_sheet)):
        target = folder.path(f"sheet-{page:04d}.png")
        stack([*lines[start : start + per_sheet], key]).save(target)
        folder.wrote(target)
        written.append(target)
    return written


def sheet_line(
    picture: Image.Image,
    rows: list[MapRow],
    alpha: float,
    display: Display | None = None,
    cmap: Colormap | None = None,
) -> Image.Image:
    first = rows[0]
    title = f"{Path(first.image_path).name}: {first.class_name} ({first.probability:.2f})"
    cells = [labelled(picture, title)]
    cells += [
        labelled(
            overlay(
                picture,
                row.native,
                alpha,
                row.box,
                display_for(row.method, display),
                cmap,
                row.frame,
            ),
            row.method,
        )
        for row in rows
    ]
    line = Image.new("RGB", (TILE * len(cells), TILE + LABEL), "white")
    for column, cell in enumerate(cells):
        line.paste(cell, (column * TILE, 0))
    return line


def labelled(picture: Image.Image, text: str) -> Image.Image:
    cell = Image.new("RGB", (TILE, TILE + LABEL), "white")
    cell.paste(ImageOps.pad(picture, (TILE, TILE), color="white"), (0, LABEL))
    ImageDraw.Draw(cell).text((3, 2), text, fill="black", font=ImageFont.load_default(12))
    return cell


def legend(methods: list[str], display: Display | None, cmap: Colormap) -> Image.Image:
    """The colour bar (0 to 1 of the displayed value) and, per display, the methods using it."""
    font = ImageFont.load_default(12)
    groups: dict[str, list[str]] = {}
    for method in methods:
        groups.setdefault(display_for(method, display).describe(), []).append(method)
    shown_by = (f"{', '.join(names)}: {shown}" for shown, names in groups.items())
    text = "display: " + "; ".join(shown_by)
    width = max(TILE * 3, int(font.getlength(text)) + 8)  # the whole line, however many methods
    strip = Image.new("RGB", (width, LEGEND), "white")
    bar = cmap(np.tile(np.linspace(0.0, 1.0, 256, dtype=np.float32), (12, 1)))
    strip.paste(Image.fromarray(bar), (24, 4))
    draw = ImageDraw.Draw(strip)
    draw.text((4, 3), "0", fill="black", font=font)
    draw.text((24 + 256 + 4, 3), "1", fill="black", font=font)
    draw.text((24 + 256 + 24, 3), f"colormap: {cmap.name}", fill="black", font=font)
    draw.text((4, 22), text, fill="black", font=font)
    return strip


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
    "legend",
    "overlay",
    "overlay_path",
    "render_overlays",
    "render_sheets",
    "sheet_line",
]
