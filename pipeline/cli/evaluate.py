"""``fdpipe evaluate``: insertion / deletion and the pointing game of several methods."""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import click
from fdpipe.cli.choices import CAM_METHODS, POINTING_TOLERANCE, VOC_TO_IMAGENET
from fdpipe.cli.options import ConfigurationError, ModelOptions, method_specs, model_options
from fdpipe.methods import split_method_specs

if TYPE_CHECKING:
    from fdpipe.export.loading import LoadedModel

# Every CAM method; FG-CAM refines one of them and is asked for by name with its base.
ALL_METHODS = ",".join(CAM_METHODS)
# --fail-under gates on scores where higher is better.
GATED_METRICS = ("insertion", "overall", "pointing")


def parse_thresholds(texts: tuple[str, ...]) -> dict[str, float]:
    """``--fail-under METRIC=VALUE`` (repeatable) -> {metric: value}."""
    thresholds = {}
    for text in texts:
        metric, sep, value = text.partition("=")
        metric = metric.strip()
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not sep or metric not in GATED_METRICS or number != number:
            raise click.BadParameter(
                f"expected METRIC=VALUE with METRIC one of {', '.join(GATED_METRICS)} (higher "
                f"is better; gate deletion through overall), got {text!r}",
                param_hint="--fail-under",
            )
        thresholds[metric] = number
    return thresholds


def maps_model(maps: Path, model: ModelOptions) -> LoadedModel:
    """The model an explain output was made with, from its metadata; options may restate it but
    never contradict it (other weights, layer or preprocessing would score foreign maps)."""
    from fdpipe.job.parts import OutputDataset, read_metadata

    parts = OutputDataset(maps).parts()
    if not parts:
        raise ValueError(f"--maps {maps} holds no part files")
    params = read_metadata(parts[0])["params"]
    assert isinstance(params, dict)
    request = model.request(source=params.get("source") or params["model"])
    loaded = replace(request, layer=request.layer or params["layer"]).load()
    mine = {
        "model": loaded.name,
        "weights_id": loaded.weights_id,
        "layer": loaded.layer,
        "preprocess": loaded.preprocess.describe(),
    }
    mine = json.loads(json.dumps(mine))
    differ = [f"{k}: {params.get(k)!r} here {v!r}" for k, v in mine.items() if params.get(k) != v]
    if differ:
        hint = (
            " (pass the --weights file the maps were made with)"
            if any(d.startswith("weights_id") for d in differ)
            else ""
        )
        raise ValueError(
            f"--maps {maps} was made with another model setup ({'; '.join(differ)}){hint}"
        )
    return loaded


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
@model_options(default_model=None, score_flag="--model-score")
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
    "--curve-batch-size",
    "batch_size",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Perturbed inputs per forward pass of the insertion/deletion curves.",
)
@click.option(
    "--fail-under",
    "fail_under",
    multiple=True,
    metavar="METRIC=VALUE",
    help="Exit 1 when a method's mean insertion, overall or pointing is below VALUE "
    "(repeatable; for CI gates).",
)
@click.option("--overlays", type=click.IntRange(min=0), default=16, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), help="Evaluate at most this many images.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a TTY).")
def evaluate(
    input_: Path | None,
    maps: Path | None,
    output: Path,
    methods: tuple[str, ...],
    model: ModelOptions,
    boxes: Path | None,
    class_map: Path,
    tolerance: float,
    curves: bool,
    overlays: int,
    limit: int | None,
    progress: bool | None,
    fail_under: tuple[str, ...],
    **protocol_options: object,
) -> None:
    """Score methods by insertion / deletion (and the pointing game with --boxes).

    With --maps, the model, layer and preprocessing come from the explain output's metadata.
    Exit 1 when a --fail-under gate is missed; 2 on a usage or configuration error.
    """
    from fdpipe.api import Explainer
    from fdpipe.evaluation.boxes import BoxFormatError, read_boxes
    from fdpipe.evaluation.comparison import LiveMaps, MapSource, StoredMaps, compare
    from fdpipe.evaluation.curves import CurveProtocol
    from fdpipe.evaluation.pointing import load_class_map
    from fdpipe.evaluation.results import OverlayWriter, markdown_table, write_report
    from fdpipe.export.request import ModelError
    from fdpipe.job.inputs import Entry, FileSource, InputError, Source, open_source
    from fdpipe.job.reader import FilterError, check_filters, images_root, select_rows

    if input_ is None and maps is None:
        raise click.UsageError("give the images with --input, or an explain output with --maps")
    if maps is not None and input_ is not None and not input_.is_dir():
        raise click.UsageError("with --maps, --input names the folder the images are in now")
    specs = method_specs(methods) if methods else []
    thresholds = parse_thresholds(fail_under)
    try:
        source: MapSource
        if maps is not None:
            loaded = maps_model(maps, model)
            wanted = [spec.label for spec in specs] or None
            check_filters(maps, methods=wanted)
            explainer = Explainer(loaded, [])  # the model only: the maps are stored
            stored = StoredMaps(select_rows(maps, methods=wanted))
            root = input_ or images_root(maps)
            images: Source = FileSource(root)
            items = [Entry(key, str(root / key)) for key in stored.image_paths]
            source = stored
        else:
            assert input_ is not None  # one of --input and --maps, checked above
            loaded = model.request().load()
            images = open_source(input_)
            items = images.entries()
            explainer = Explainer(loaded, specs or split_method_specs(ALL_METHODS))
            source = LiveMaps(explainer)
        ground_truth = read_boxes(boxes) if boxes is not None else None
        labels = load_class_map(class_map, loaded.class_names) if boxes is not None else None
    except (InputError, ModelError, BoxFormatError, FilterError, ValueError, OSError) as exc:
        raise ConfigurationError(str(exc)) from exc
    crop_box = loaded.preprocess.crop_box  # the overlays' maps cover what the model saw
    writer = OverlayWriter(output / "overlays", loaded.class_names, overlays, crop_box=crop_box)
    comparison = compare(
        loaded,
        explainer.network,
        source,
        items[:limit],
        images,
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
    missed = [
        f"{label}: {metric} {row[metric]:.4f} < {bound}"
        for label, row in comparison.summary().items()
        for metric, bound in thresholds.items()
        if metric in row and row[metric] < bound
    ]
    missed += [
        f"{label}: no {metric} score" for label, row in comparison.summary().items()
        for metric in thresholds if metric not in row
    ]  # fmt: skip
    if missed:
        click.echo("fail-under: " + "; ".join(missed), err=True)
        raise SystemExit(1)
