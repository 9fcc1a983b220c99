"""``fdpipe render``: heat-map overlays (PNG) of an output's rows, or contact sheets."""

from __future__ import annotations

from pathlib import Path

import click
from fdpipe.cli.options import split_list


@click.command()
@click.argument("output", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--to", "to", required=True, type=click.Path(path_type=Path), help="PNG directory.")
@click.option("--method", "methods", help="Comma-separated methods to render (default: all).")
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
    output: Path,
    to: Path,
    methods: str | None,
    images: tuple[str, ...],
    ranks: tuple[int, ...],
    sheet: bool,
    images_root: Path | None,
    alpha: float,
    limit: int | None,
) -> None:
    """Heat-map overlays (PNG) of the rows of OUTPUT, or contact sheets with --sheet."""
    from fdpipe import render as rendering
    from fdpipe.job.reader import images_root as find_root
    from fdpipe.job.reader import select_rows

    rows = select_rows(
        output,
        methods=split_list(methods) if methods else None,
        images=images or None,
        ranks=ranks or None,
    )
    root = images_root or find_root(output)
    draw = rendering.render_sheets if sheet else rendering.render_overlays
    written = draw(rows, root, to, alpha=alpha, limit=limit)
    click.echo(f"wrote {len(written)} PNG file(s) to {to}")
