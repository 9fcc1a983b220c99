"""The dataset commands of the CLI: ``explain``, ``render`` and ``demo``.

Exit codes of ``fdpipe explain``: 0 every image explained; 1 at least one image of the input
(this run or an earlier, resumed one) has a failed row; 2 invalid usage or parameters, including a
refused resume. An unexpected crash prints a traceback and exits 1.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import click
from fdpipe.export.models import ModelError
from fdpipe.inputs import InputError, parse_shard
from fdpipe.job import ENGINES, ConfigError, JobConfig, run_job
from fdpipe.kernels import METHODS
from fdpipe.options import model_options
from fdpipe.output import ResumeError
from fdpipe.runtime import RUNTIMES

USER_ERRORS = (InputError, ModelError, ResumeError, ConfigError)


def split_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_methods(text: str) -> list[str]:
    names = split_list(text)
    unknown = [name for name in names if name not in METHODS]
    if unknown or not names:
        raise click.BadParameter(f"unknown method {unknown}; choose from {', '.join(METHODS)}")
    return names


def parse_classes(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(part) for part in split_list(text))
    except ValueError:
        raise click.BadParameter(
            f"--classes takes class indices like 1,2,3, got {text!r}"
        ) from None


def method_options(
    names: list[str], fd_options: dict[str, object], fg_options: dict[str, object]
) -> dict[str, dict[str, object]]:
    """FD-CAM flags go to fdcam (and to fgcam on an fdcam base); FG-CAM flags to fgcam only."""
    options: dict[str, dict[str, object]] = {name: {} for name in names}
    if "fdcam" in options:
        options["fdcam"] = dict(fd_options)
    if "fgcam" in options:
        base = fg_options.get("base", "gradcam")
        options["fgcam"] = dict(fg_options) | (fd_options if base == "fdcam" else {})
    return options


@click.command()
@click.option(
    "-i",
    "--input",
    "input_",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="Image directory (walked recursively), list file, or CSV/Parquet manifest.",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="Output directory of Parquet part files.",
)
@model_options
@click.option("--artifacts", type=click.Path(path_type=Path), help="Exported model artifacts.")
@click.option("--runtime", type=click.Choice(RUNTIMES), default="auto", show_default=True)
@click.option(
    "--method",
    "methods",
    default="fdcam",
    show_default=True,
    help=f"Comma-separated methods, sharing one pass: {', '.join(METHODS)}.",
)
@click.option("--classes", help="Explain these class indices (e.g. 1,2,3) instead of the top-k.")
@click.option("--top-k", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=min(4, os.cpu_count() or 1),
    show_default=True,
    help="Decode threads.",
)
@click.option(
    "--part-size",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Images per part file (at most this much work is lost to a kill).",
)
@click.option("--shard", default="0/1", show_default=True, help="Explain shard i of n (i/n).")
@click.option("--overwrite", is_flag=True, help="Start over instead of resuming.")
@click.option("--save-weights", is_flag=True, help="Store per-channel weights.")
@click.option("--engine", type=click.Choice(ENGINES), default="local", show_default=True)
@click.option("--address", help="Ray cluster address (--engine ray); default: a local Ray.")
@click.option(
    "--actors", type=click.IntRange(min=1), help="Ray model actors (default: per GPU/CPU)."
)
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a TTY).")
@click.option("--fd-threshold", type=float, help="FD-CAM grouping quantile (0.95).")
@click.option("--fd-shift", type=float, help="FD-CAM b in a*exp(s) - b (0.5).")
@click.option("--fd-grouping/--no-fd-grouping", default=None, help="FD-CAM channel grouping.")
@click.option("--fd-scoring", type=click.Choice(["both", "off"]), help="Switch-on+off or off only.")
@click.option("--fd-combination", type=click.Choice(["product", "exp", "exp_shift"]))
@click.option("--fd-probabilities", is_flag=True, default=None, help="Score probabilities.")
@click.option("--base", type=click.Choice(["gradcam", "scorecam", "fdcam"]), help="FG-CAM base.")
@click.option("--resolution", help='FG-CAM target: "input" or a layer like features.5.')
@click.option("--denoise", is_flag=True, default=None, help="FG-CAM SVD denoising.")
def explain(
    input_: Path, output: Path, methods: str, classes: str | None, shard: str, **options: object
) -> None:
    """Explain every image of INPUT into a Parquet dataset at OUTPUT; reruns resume."""
    fd = {key[3:]: options.pop(key) for key in list(options) if key.startswith("fd_")}
    fg = {key: options.pop(key) for key in ("base", "resolution", "denoise")}
    if options["engine"] == "ray" and importlib.util.find_spec("ray") is None:
        raise click.UsageError("--engine ray needs Ray: pip install 'fdpipe[ray]'")
    names = parse_methods(methods)
    try:
        config = JobConfig(
            input=input_,
            output=output,
            methods=method_options(
                names,
                {k: v for k, v in fd.items() if v is not None},
                {k: v for k, v in fg.items() if v is not None},
            ),
            classes=parse_classes(classes),
            shard=parse_shard(shard),
            **options,  # type: ignore[arg-type]
        )
        summary = run_job(config)
    except USER_ERRORS as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(f"{output}: {summary}")
    if summary.any_failed:
        raise SystemExit(1)


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

    rows = rendering.select_rows(
        output,
        methods=split_list(methods) if methods else None,
        images=images or None,
        ranks=ranks or None,
    )
    root = images_root or rendering.images_root(output)
    draw = rendering.render_sheets if sheet else rendering.render_overlays
    written = draw(rows, root, to, alpha=alpha, limit=limit)
    click.echo(f"wrote {len(written)} PNG file(s) to {to}")


@click.command()
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("out/demo"),
    show_default=True,
)
def demo(output: Path) -> None:
    """Explain scikit-image's sample photos with SqueezeNet (offline); draw a contact sheet."""
    from fdpipe.demo import predictions, run_demo

    summary, sheets = run_demo(output)
    click.echo("Top-1 predictions (squeezenet1_1):")
    for line in predictions(output / "explanations"):
        click.echo(f"  {line}")
    click.echo(f"Explanations: {output / 'explanations'} ({summary})")
    click.echo(f"Contact sheet: {', '.join(str(path) for path in sheets)}")


__all__ = ["demo", "explain", "method_options", "render"]
