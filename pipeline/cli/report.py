"""``fdpipe report``: a static HTML site of an ``explain`` output (opens from file://)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from fdpipe.cli.options import (
    ConfigurationError,
    OutputLocation,
    colormap_option,
    display_option,
    storage_option,
)

if TYPE_CHECKING:
    from fdpipe.display import Colormap, Display


@click.command()
@click.argument("maps", type=OutputLocation())
@click.option(
    "-o",
    "--output",
    "site",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Site directory (created; thumbnails in it are reused by the next report).",
)
@click.option(
    "--images-root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Where the images are now (default: the input root the job recorded).",
)
@click.option(
    "--page-size",
    type=click.IntRange(min=1, max=10_000),
    default=50,
    show_default=True,
    help="Images per gallery page.",
)
@display_option
@colormap_option
@storage_option
def report(
    maps: Path | str,
    site: Path,
    images_root: Path | None,
    page_size: int,
    display: Display | None,
    colormap: Colormap,
    storage_options: dict[str, Any],
) -> None:
    """An HTML report of MAPS (an explain output): run records, counts, score plots, failures,
    galleries; it opens from file:// with no server."""
    from fdpipe.job.reader import images_root as recorded_root
    from fdpipe.job.table import open_results
    from fdpipe.report import check_site, write_site

    open_results(maps, storage_options)  # a missing, foreign or earlier-layout output: named now
    try:
        root = images_root or recorded_root(maps, storage_options)
    except (FileNotFoundError, KeyError, TypeError):
        root = None
    if root is not None and not root.is_dir():
        click.echo(f"images not found at {root}: maps are shown alone (see --images-root)")
        root = None
    if isinstance(maps, Path) and site.resolve() == maps.resolve():
        raise ConfigurationError("the report needs its own directory, not MAPS itself")
    try:
        check_site(site)  # a folder of files fdpipe did not write: refused (ReportTargetError)
        site.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(f"cannot create {site}: {exc.strerror or exc}") from None
    summary = write_site(
        maps,
        site,
        images_root=root,
        page_size=page_size,
        display=display,
        cmap=colormap,
        options=storage_options,
    )
    click.echo(
        f"{summary.images} images ({summary.failed} failed) on {summary.pages} page(s); "
        f"thumbnails: {summary.thumbnails_written} written, {summary.thumbnails_reused} reused"
        + (f"; {summary.missing_images} images not found" if summary.missing_images else "")
    )
    click.echo(f"open {summary.index}")
