"""``fdpipe evaluate``: insertion / deletion and the pointing game of several methods."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource
from fdpipe.cli.choices import CAM_METHODS, POINTING_TOLERANCE, VOC_TO_IMAGENET
from fdpipe.cli.options import (
    FiniteFloat,
    OutputLocation,
    command_line,
    method_specs,
    model_options,
    storage_option,
)
from fdpipe.methods import split_method_specs

if TYPE_CHECKING:
    from fdpipe.api import Explainer
    from fdpipe.evaluation.comparison import Comparison
    from fdpipe.evaluation.randomisation import Cascade
    from fdpipe.export.loading import LoadedModel
    from fdpipe.export.request import ModelRequest
    from fdpipe.job.inputs import Entry, Source
    from PIL import Image

# Every CAM method; FG-CAM refines one of them and is asked for by name with its base.
ALL_METHODS = ",".join(CAM_METHODS)
# --fail-under gates on scores where higher is better.
GATED_METRICS = ("insertion", "overall", "pointing")
# --metric: evaluation.comparison.METRIC_FAMILIES, named here so that --help does not load torch
METRIC_CHOICES = ("curves", "confidence", "road")


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


def parse_metrics(texts: tuple[str, ...]) -> list[str]:
    """``--metric`` (repeatable, comma-separated) -> metric families in METRIC_CHOICES order."""
    names = {n.strip() for text in texts for n in text.split(",") if n.strip()}
    if not names:
        return ["curves", "confidence"]
    if "all" in names:
        return list(METRIC_CHOICES)
    unknown = names - set(METRIC_CHOICES)
    if unknown:
        raise click.BadParameter(
            f"unknown {', '.join(sorted(unknown))}: choose from {', '.join(METRIC_CHOICES)}, all",
            param_hint="--metric",
        )
    return [m for m in METRIC_CHOICES if m in names]


def parse_fractions(text: str) -> tuple[float, ...]:
    """``--road-fractions 0.1,0.5`` -> (0.1, 0.5), each strictly between 0 and 1."""
    try:
        fractions = tuple(float(part) for part in text.split(","))
    except ValueError:
        fractions = ()
    if not fractions or not all(0 < f < 1 for f in fractions):
        raise click.BadParameter(
            f"expected comma-separated fractions in (0, 1), got {text!r}",
            param_hint="--road-fractions",
        )
    return fractions


def sanity_check(
    loaded: LoadedModel,
    explainer: Explainer,
    comparison: Comparison,
    entries: list[Entry],
    source: Source,
    steps: int,
    images: int,
    stop: float | None,
) -> tuple[Cascade, tuple[Image.Image, tuple[float, float, float, float]]]:
    """The cascade on the first ``images`` scored images; the first one's picture and the part
    of it the model saw, for its sheet."""
    import torch
    from fdpipe.evaluation.randomisation import cascade
    from fdpipe.images import load_image_sized

    scored = list(dict.fromkeys(s.image for s in comparison.scores))[:images]
    by_key = {entry.key: entry for entry in entries}
    pictures = [load_image_sized(source.open(by_key[key]))[0] for key in scored]
    inputs = torch.stack([loaded.preprocess(p) for p in pictures]).to(explainer.device)
    result = cascade(loaded, list(explainer.methods), inputs, scored, steps=steps, stop=stop)
    first = pictures[0]
    return result, (first, loaded.preprocess.crop_box(first.width, first.height))


def maps_model(
    maps: Path | str,
    model: ModelRequest,
    score_given: bool = False,
    options: dict[str, Any] | None = None,
) -> LoadedModel:
    """The model an explain output was made with, rebuilt from its metadata: source, layer,
    weights file (checked against its recorded sha256), weights map, every preprocessing field,
    the score and class names. Options may restate it but never contradict it (other weights,
    layer or preprocessing would score foreign maps). ``options``: an object store's (``maps``
    a URL)."""
    from fdpipe.export.model_sources import recorded_source, runs_code
    from fdpipe.export.preprocessing import Preprocess
    from fdpipe.export.request import ModelError, PreprocessOptions
    from fdpipe.job.table import TableError, open_results

    params = open_results(maps, options).metadata().get("params")
    if not isinstance(params, dict):
        raise TableError(f"--maps {maps}: its newest commit records no run parameters")
    recorded = params.get("source") or params.get("model")
    if not isinstance(recorded, str):
        raise TableError(f"--maps {maps}: its run parameters record no model source")
    if model.source is None and runs_code(recorded):  # an output is data: never run what it names
        raise ModelError(
            f"--maps {maps} was made with {recorded!r}, a model source that runs code: fdpipe "
            f"runs it only when you name it yourself (--model {recorded_source(recorded)})"
        )
    described = params.get("preprocess")
    if not isinstance(described, dict):
        raise TableError(f"--maps {maps}: its run parameters record no preprocessing")
    preprocess = model.preprocess
    if preprocess is None or isinstance(preprocess, PreprocessOptions):  # restated on top
        base = Preprocess.described(described)
        preprocess = base if preprocess is None else preprocess.apply(base)
    weights = model.weights or recorded_weights(maps, params.get("weights_file"))
    weights_map = model.weights_map or (params.get("weights_map") if weights else None)
    if not (weights_map is None or weights_map == "by-position" or isinstance(weights_map, dict)):
        raise ModelError(f"--maps {maps}: its recorded weights map {weights_map!r} is not fdpipe's")
    layer = model.layer or params.get("layer")
    if not isinstance(layer, str):
        raise TableError(f"--maps {maps}: its run parameters record no layer name")
    request = replace(
        model,
        source=model.source or recorded,
        layer=layer,
        weights=weights,
        weights_map=weights_map,
        pretrained=model.pretrained and not str(params.get("weights_id")).startswith("random-"),
        preprocess=preprocess,
        score=model.score if score_given else str(params.get("score") or model.score),
        class_names=model.class_names or recorded_names(maps, params.get("class_names")),
    )
    loaded = request.load()
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
        raise ModelError(
            f"--maps {maps} was made with another model setup ({'; '.join(differ)}){hint}"
        )
    return loaded


def recorded_names(maps: Path | str, recorded: object) -> list[str] | None:
    """The class names an output records (where they were not the default ones)."""
    from fdpipe.export.request import ModelError

    if recorded is None:
        return None
    if not (isinstance(recorded, list) and all(isinstance(n, str) for n in recorded)):
        raise ModelError(f"--maps {maps}: its recorded class names are not a list of names")
    return recorded


def recorded_weights(maps: Path | str, recorded: object) -> Path | None:
    """The weights file an output records (``--weights`` of its run), if it is still there with
    the same content; ModelError in one line when it is gone or changed."""
    from fdpipe.export.request import ModelError
    from fdpipe.export.weights import sha256_file

    if recorded is None:
        return None
    if not (isinstance(recorded, dict) and {"path", "sha256"} <= recorded.keys()):
        raise ModelError(f"--maps {maps}: its recorded weights file {recorded!r} is not fdpipe's")
    path, sha = Path(str(recorded["path"])), str(recorded["sha256"])
    fix = "restore it, or pass --weights with the file the maps were made with"
    if not path.is_file():
        raise ModelError(f"--maps {maps} was made with weights file {path}, which is gone: {fix}")
    now = sha256_file(path)
    if now != sha:
        raise ModelError(
            f"--maps {maps} was made with weights file {path}, which has changed since (sha256 "
            f"{sha[:12]}... then, {now[:12]}... now): {fix}"
        )
    return path


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
    type=OutputLocation(),
    help="An `fdpipe explain` output (a folder, or s3://...) to read the maps from, instead of "
    "computing them.",
)
@storage_option
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
    "--deletion-substrate",
    type=click.Choice(["zero", "blur", "mean"]),
    default="zero",
    show_default=True,
    help="What deleted pixels become: zeros of the normalised input, RISE's blur, the image's "
    "per-channel mean.",
)
@click.option(
    "--insertion-substrate",
    type=click.Choice(["blur", "zero", "mean"]),
    default="blur",
    show_default=True,
)
@click.option(
    "--order",
    type=click.Choice(["morf", "lerf"]),
    default="morf",
    show_default=True,
    help="Insertion / deletion order: most relevant first (the protocol) or least relevant first.",
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
@click.option(
    "--metric",
    "metrics",
    multiple=True,
    help=f"Comma-separated, of {', '.join(METRIC_CHOICES)} or all (default: curves,confidence; "
    "the pointing games come with --boxes). ROAD solves a sparse system per removal: slow.",
)
@click.option(
    "--road-fractions",
    default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9",
    show_default=True,
    help="Fractions of the pixels ROAD removes.",
)
@click.option(
    "--road-noise",
    type=FiniteFloat(0.0, 10.0),
    default=0.01,
    show_default=True,
    help="Standard deviation of the noise ROAD adds to imputed pixels (normalised input units).",
)
@click.option(
    "--chunk",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Images scored together: their perturbed inputs share the forward passes.",
)
@click.option(
    "--sanity",
    type=click.IntRange(min=0),
    default=0,
    help="Model-randomisation check: re-initialise this many blocks, from the output down, one "
    "more at a time (0: off).",
)
@click.option(
    "--sanity-images",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Images of the sanity check (the first ones scored).",
)
@click.option(
    "--sanity-stop",
    type=FiniteFloat(-1.0, 1.0),
    help="Stop explaining a method in the sanity check once its mean rank correlation is "
    "below this (e.g. 0.5): deep cascades cost the slow methods only the steps they need.",
)
@click.option("--sample", type=click.IntRange(min=1), help="Evaluate a random sample of N images.")
@click.option("--seed", type=int, default=0, show_default=True, help="Of --sample.")
@click.option(
    "--choose",
    is_flag=True,
    help="Rank every method by every metric and print the recommendation with its interval.",
)
@click.option("--overlays", type=click.IntRange(min=0), default=16, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), help="Evaluate at most this many images.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a TTY).")
def evaluate(
    input_: Path | None,
    maps: Path | str | None,
    output: Path,
    storage_options: dict[str, Any],
    methods: tuple[str, ...],
    model: ModelRequest,
    boxes: Path | None,
    class_map: Path,
    tolerance: float,
    curves: bool,
    overlays: int,
    limit: int | None,
    progress: bool | None,
    fail_under: tuple[str, ...],
    metrics: tuple[str, ...],
    road_fractions: str,
    road_noise: float,
    chunk: int,
    sanity: int,
    sanity_images: int,
    sanity_stop: float | None,
    sample: int | None,
    seed: int,
    choose: bool,
    **protocol_options: object,
) -> None:
    """Score methods by insertion / deletion (and the pointing game with --boxes).

    With --maps, the model (source, weights file, weights map, layer, preprocessing, score,
    class names) comes from the explain output's metadata.
    Exit 1 when a --fail-under gate is missed; 2 on a usage or configuration error.
    """
    from fdpipe.api import Explainer
    from fdpipe.evaluation.boxes import read_boxes
    from fdpipe.evaluation.choice import recommend, sample_items
    from fdpipe.evaluation.comparison import LiveMaps, MapSource, StoredMaps, compare
    from fdpipe.evaluation.curves import CurveProtocol
    from fdpipe.evaluation.pointing import load_class_map
    from fdpipe.evaluation.results import (
        OverlayWriter,
        markdown_table,
        statistics_of,
        verdict_line,
        write_report,
    )
    from fdpipe.evaluation.road import ROADProtocol
    from fdpipe.job.inputs import Entry, FileSource, key_file
    from fdpipe.job.reader import CurrentRows, check_filters, images_root, select_rows
    from fdpipe.job.sources import open_source

    if input_ is None and maps is None:
        raise click.UsageError("give the images with --input, or an explain output with --maps")
    if maps is not None and sanity:
        raise click.UsageError("--sanity re-runs the methods: give --input, not --maps")
    given = click.get_current_context().get_parameter_source("sanity_images")
    if not sanity and (sanity_stop is not None or given != ParameterSource.DEFAULT):
        raise click.UsageError("--sanity-stop and --sanity-images need --sanity N")
    if maps is not None and input_ is not None and not input_.is_dir():
        raise click.UsageError("with --maps, --input names the folder the images are in now")
    specs = method_specs(methods) if methods else []
    thresholds = parse_thresholds(fail_under)
    families = parse_metrics(metrics)
    road = ROADProtocol(
        fractions=parse_fractions(road_fractions),
        noise=road_noise,
        score=protocol_options["score"],  # type: ignore[arg-type]
        batch_size=protocol_options["batch_size"],  # type: ignore[arg-type]
    )
    source: MapSource
    if maps is not None:
        given = click.get_current_context().get_parameter_source("model_score")
        loaded = maps_model(maps, model, given is not ParameterSource.DEFAULT, storage_options)
        wanted = [spec.label for spec in specs] or None
        current = CurrentRows(maps, options=storage_options)  # the current rows, worked out once
        check_filters(current, methods=wanted)
        explainer = Explainer(loaded, [])  # the model only: the maps are stored
        stored = StoredMaps(select_rows(current, methods=wanted))
        root = input_ or images_root(maps, storage_options)
        images: Source = FileSource(root)
        items = [Entry(key, str(key_file(root, key))) for key in stored.image_paths]
        source = stored
    else:
        assert input_ is not None  # one of --input and --maps, checked above
        loaded = model.load()
        images = open_source(input_)
        items = images.entries()
        explainer = Explainer(loaded, specs or split_method_specs(ALL_METHODS))
        source = LiveMaps(explainer)
    ground_truth = read_boxes(boxes) if boxes is not None else None
    labels = load_class_map(class_map, loaded.class_names) if boxes is not None else None
    crop_box = loaded.preprocess.crop_box  # the overlays' maps cover what the model saw
    writer = OverlayWriter(output / "overlays", loaded.class_names, overlays, crop_box=crop_box)
    chosen = sample_items(items, sample, seed) if sample is not None else items
    chosen = chosen[:limit]
    comparison = compare(
        loaded,
        explainer.network,
        source,
        chosen,
        images,
        protocol=CurveProtocol(**protocol_options),  # type: ignore[arg-type]
        metrics=families if curves else [f for f in families if f != "curves"],
        road=road,
        chunk=chunk,
        boxes=ground_truth,
        class_map=labels,
        tolerance=tolerance,
        on_maps=writer,
        progress=sys.stderr.isatty() if progress is None else progress,
    )
    command = command_line(click.get_current_context())
    cascade, picture = None, None
    if sanity and comparison.scores:
        cascade, picture = sanity_check(
            loaded, explainer, comparison, chosen, images, sanity, sanity_images, sanity_stop
        )
    write_report(
        output, comparison, model=loaded.name, command=command, cascade=cascade,
        cascade_picture=picture,
    )  # fmt: skip
    click.echo(markdown_table(comparison.summary()), nl=False)
    statistics = statistics_of(comparison)
    line = verdict_line(statistics)
    if choose:
        click.echo(recommend(statistics))
    elif line:
        click.echo(line)
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
