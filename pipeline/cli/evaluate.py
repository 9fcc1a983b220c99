"""``fdpipe evaluate``: insertion / deletion and the pointing game of several methods."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click
from fdpipe.api import Explainer
from fdpipe.cli.options import method_specs, model_options
from fdpipe.evaluation.boxes import BoxFormatError, read_boxes
from fdpipe.evaluation.comparison import LiveMaps, MapSource, StoredMaps, compare
from fdpipe.evaluation.curves import CurveProtocol
from fdpipe.evaluation.pointing import POINTING_TOLERANCE, VOC_TO_IMAGENET, load_class_map
from fdpipe.evaluation.report import OverlayWriter, markdown_table, write_report
from fdpipe.export.models import ModelError, load_model
from fdpipe.job.inputs import InputError, InputItem, collect_inputs
from fdpipe.job.reader import images_root, select_rows
from fdpipe.kernels import FGCAM, METHODS
from fdpipe.methods import split_method_specs

# Every CAM method; FG-CAM refines one of them and is asked for by name with its base.
ALL_METHODS = ",".join(name for name in METHODS if name != FGCAM.name)


@click.command()
@click.option(
    "-i",
    "--input",
    "input_",
    type=click.Path(exists=True, path_type=Path),
    help="Images (directory, list file or manifest); with --maps: where its images are now.",
)
@click.option(
    "--maps",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="An `fdpipe explain` output to read the maps from, instead of computing them.",
)
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path))
@click.option(
    "--method",
    "methods",
    multiple=True,
    help=f"Comma-separated method specs, options after a colon, e.g. "
    f"fdcam:grouping=false,scoring=off (default: {ALL_METHODS}; with --maps: all stored).",
)
@model_options
@click.option(
    "--boxes",
    type=click.Path(exists=True, path_type=Path),
    help="Pointing game ground truth: VOC Annotations folder or .xml, or COCO .json.",
)
@click.option(
    "--class-map",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=VOC_TO_IMAGENET,
    show_default="VOC -> ImageNet",
    help="JSON map from dataset classes to model classes.",
)
@click.option("--tolerance", type=float, default=POINTING_TOLERANCE, show_default=True)
@click.option("--curves/--no-curves", default=True, help="Insertion / deletion (default: on).")
@click.option(
    "--step-fraction", type=click.FloatRange(0, 1, min_open=True), default=0.0357, show_default=True
)
@click.option(
    "--deletion-substrate", type=click.Choice(["zero", "blur"]), default="zero", show_default=True
)
@click.option(
    "--insertion-substrate", type=click.Choice(["blur", "zero"]), default="blur", show_default=True
)
@click.option(
    "--score", type=click.Choice(["probability", "logit"]), default="probability", show_default=True
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Perturbed inputs per forward pass.",
)
@click.option("--overlays", type=click.IntRange(min=0), default=16, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), help="Evaluate at most this many images.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a TTY).")
def evaluate(
    input_: Path | None,
    maps: Path | None,
    output: Path,
    methods: tuple[str, ...],
    model: str,
    layer: str | None,
    weights: Path | None,
    boxes: Path | None,
    class_map: Path,
    tolerance: float,
    curves: bool,
    overlays: int,
    limit: int | None,
    progress: bool | None,
    **protocol_options: object,
) -> None:
    """Score methods by insertion / deletion (and the pointing game with --boxes)."""
    if input_ is None and maps is None:
        raise click.UsageError("give the images with --input, or an explain output with --maps")
    if maps is not None and input_ is not None and not input_.is_dir():
        raise click.UsageError("with --maps, --input names the folder the images are in now")
    specs = method_specs(methods) if methods else []
    try:
        loaded = load_model(model, layer=layer, weights=weights)
        source: MapSource
        if maps is not None:
            explainer = Explainer(loaded, [])  # the model only: the maps are stored
            wanted = [spec.label for spec in specs] or None
            stored = StoredMaps(select_rows(maps, methods=wanted))
            root = input_ or images_root(maps)
            items = [InputItem(key, root / key) for key in stored.image_paths]
            source = stored
        else:
            assert input_ is not None  # one of --input and --maps, checked above
            items = collect_inputs(input_).items
            explainer = Explainer(loaded, specs or split_method_specs(ALL_METHODS))
            source = LiveMaps(explainer)
        ground_truth = read_boxes(boxes) if boxes is not None else None
        labels = load_class_map(class_map, loaded.class_names) if boxes is not None else None
    except (InputError, ModelError, BoxFormatError, ValueError, FileNotFoundError) as exc:
        raise click.UsageError(str(exc)) from exc
    writer = OverlayWriter(output / "overlays", loaded.class_names, overlays)
    comparison = compare(
        loaded,
        explainer.network,
        source,
        items[:limit],
        protocol=CurveProtocol(**protocol_options),  # type: ignore[arg-type]
        curves=curves,
        boxes=ground_truth,
        class_map=labels,
        tolerance=tolerance,
        on_maps=writer,
        progress=sys.stderr.isatty() if progress is None else progress,
    )
    launched = Path(sys.argv[0]).name == "fdpipe"  # not when called in-process (tests, API)
    command = shlex.join(["fdpipe", *sys.argv[1:]]) if launched else None
    write_report(output, comparison, model=loaded.name, command=command)
    click.echo(markdown_table(comparison.summary()), nl=False)
    click.echo(f"report: {output / 'report.md'} ({len(writer.written)} overlay(s))")
