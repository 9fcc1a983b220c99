"""``fdpipe render``: heat-map overlays (PNG) of an output's rows, or contact sheets."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from fdpipe.cli.options import (
    ConfigurationError,
    FiniteFloat,
    OutputLocation,
    colormap_option,
    display_option,
    storage_option,
)
from fdpipe.methods import split_method_specs

if TYPE_CHECKING:
    from fdpipe.display import Colormap, Display


@click.command()
@click.argument("maps", type=OutputLocation())
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
@click.option("--alpha", type=FiniteFloat(0.0, 1.0), default=0.5, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), help="At most this many images.")
@display_option
@colormap_option
@storage_option
def render(
    maps: Path | str,
    to: Path,
    methods: tuple[str, ...],
    images: tuple[str, ...],
    ranks: tuple[int, ...],
    sheet: bool,
    images_root: Path | None,
    alpha: float,
    limit: int | None,
    display: Display | None,
    colormap: Colormap,
    storage_options: dict[str, Any],
) -> None:
    """Heat-map overlays (PNG) of the maps in MAPS (an explain output), or contact sheets.

    A method, rank or image filter that matches nothing in MAPS is an error (exit 2). Overlays
    mirror the input tree under the output (``a/b.jpg`` -> ``a/b.jpg.<method>.rank<r>.png``);
    exit code 1 when some images could not be read any more (the others are rendered).
    """
    from fdpipe import render as rendering
    from fdpipe.job.reader import CurrentRows, FilterError, check_filters, select_rows
    from fdpipe.job.reader import images_root as find_root
    from fdpipe.job.table import TableError, open_results

    labels = [label for text in methods for label in split_method_specs(text)] or None
    draw = rendering.render_sheets if sheet else rendering.render_overlays
    missing: list[str] = []
    try:
        open_results(maps, storage_options)  # a missing, foreign or earlier-layout output
        stored = CurrentRows(maps, options=storage_options)  # the current rows' keys, once
        check_filters(stored, methods=labels, images=images, ranks=ranks)
        rows = select_rows(stored, methods=labels, images=images or None, ranks=ranks or None)
        root = images_root or find_root(maps, storage_options)
        if to.resolve() == root.resolve():
            raise ConfigurationError(f"--to {to} is the images' own folder: choose another")
        written = draw(
            rows,
            root,
            to,
            alpha=alpha,
            limit=limit,
            missing=missing,
            display=display,
            cmap=colormap,
        )
    except FilterError as exc:
        raise ConfigurationError(str(exc)) from exc
    except TableError as exc:
        raise ConfigurationError(str(exc)) from None
    except (FileNotFoundError, KeyError) as exc:
        raise ConfigurationError(f"{maps} is not an fdpipe explain output: {exc}") from None
    except OSError as exc:  # the output cannot be written (a file, read-only)
        raise ConfigurationError(f"--to {to}: {exc.strerror}") from None
    click.echo(f"wrote {len(written)} PNG file(s) to {to}")
    if missing:
        click.echo(f"{len(missing)} image(s) could not be read, e.g. {missing[0]}", err=True)
        raise SystemExit(1)
