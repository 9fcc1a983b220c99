"""``fdpipe render``: heat-map overlays (PNG) of an output's rows, or contact sheets."""

from __future__ import annotations

from pathlib import Path

import click
from fdpipe.cli.options import ConfigurationError
from fdpipe.methods import split_method_specs


@click.command()
@click.argument("maps", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "-o", "--output", "--to", "to", required=True, type=click.Path(path_type=Path),
    help="PNG directory (--to is an alias).",
)  # fmt: skip
@click.option(
    "--method",
    "methods",
    multiple=True,
    help="Methods to render, repeatable or comma-separated (default: all).",
)
@click.option("--image", "images", multiple=True, help="Image path or glob (repeatable).")
@click.option("--rank", "ranks", type=int, multiple=True, help="Class rank(s) (default: all).")
@click.option("--sheet", is_flag=True, help="Contact sheets: methods side by side per image.")
@click.option(
    "--images-root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Where the images are now (default: the input root the job recorded).",
)
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), help="At most this many images.")
def render(
    maps: Path,
    to: Path,
    methods: tuple[str, ...],
    images: tuple[str, ...],
    ranks: tuple[int, ...],
    sheet: bool,
    images_root: Path | None,
    alpha: float,
    limit: int | None,
) -> None:
    """Heat-map overlays (PNG) of the maps in MAPS (an explain output), or contact sheets.

    A method, rank or image filter that matches nothing in MAPS is an error (exit 2).
    """
    from fdpipe import render as rendering
    from fdpipe.job.reader import FilterError, check_filters, select_rows
    from fdpipe.job.reader import images_root as find_root

    labels = [label for text in methods for label in split_method_specs(text)] or None
    try:
        check_filters(maps, methods=labels, images=images, ranks=ranks)
    except FilterError as exc:
        raise ConfigurationError(str(exc)) from exc
    rows = select_rows(maps, methods=labels, images=images or None, ranks=ranks or None)
    root = images_root or find_root(maps)
    draw = rendering.render_sheets if sheet else rendering.render_overlays
    written = draw(rows, root, to, alpha=alpha, limit=limit)
    click.echo(f"wrote {len(written)} PNG file(s) to {to}")
