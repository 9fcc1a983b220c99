"""``fdpipe demo``: the bundled photos explained offline, and a contact sheet."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("out/demo"),
    show_default=True,
)
def demo(output: Path) -> None:
    """Explain scikit-image's sample photos with SqueezeNet (offline); a contact sheet, a report."""
    from fdpipe.demo import predictions, run_demo

    summary, sheets, site = run_demo(output)
    click.echo("Top-1 predictions (squeezenet1_1):")
    for line in predictions(output / "explanations"):
        click.echo(f"  {line}")
    click.echo(f"Explanations: {output / 'explanations'} ({summary})")
    click.echo(f"Contact sheet: {', '.join(str(path) for path in sheets)}")
    click.echo(f"Report: {site.index}")
