"""``fdpipe explain``: every image of an input into a Parquet dataset; reruns add what is new."""

from __future__ import annotations

import importlib.util
import math
import os
import signal
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, ClassVar

import click
from fdpipe.cli.choices import (
    DECODES,
    ENGINES,
    FGCAM_BASES,
    MAX_PIXELS,
    METHOD_NAMES,
    PRECISION_CHOICES,
    RUNTIMES,
)
from fdpipe.cli.options import (
    FiniteFloat,
    command_line,
    method_alias,
    model_options,
    parse_classes,
    parse_methods,
    storage_option,
)
from fdpipe.errors import FdpipeError

if TYPE_CHECKING:
    from fdpipe.export.request import ModelRequest
    from fdpipe.methods import MethodSpec


class ByteSize(click.ParamType):
    """A positive size in bytes, with an optional K/M/G/T suffix (powers of 1024)."""

    name = "size"
    UNITS: ClassVar[dict[str, int]] = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        if isinstance(value, int):
            number, unit = float(value), ""
        else:
            text = str(value).strip().upper().removesuffix("B").removesuffix("I")
            unit = text[-1:] if text[-1:] in self.UNITS else ""
            try:
                number = float(text.removesuffix(unit)) if unit else float(text)
            except ValueError:
                number = math.nan
        size = number * self.UNITS[unit]
        if not (math.isfinite(size) and size >= 1):
            self.fail(f"{value!r} is not a positive size (2G, 512M, 1000000)", param, ctx)
        return int(size)


class BatchSize(click.ParamType):
    """A positive number of images, or ``auto``."""

    name = "integer|auto"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int | str:
        if value == "auto":
            return "auto"
        return int(click.IntRange(min=1).convert(value, param, ctx))  # type: ignore[arg-type]


JOB_STARTED = "fdpipe.job_started"  # context meta: the job writes its own record from here on


def record_refusal(ctx: click.Context, params: Mapping[str, Any], error: Exception) -> None:
    """A run refused before the job starts (a bad option, variable or combination) still leaves
    a record: in OUTPUT/_runs when the output exists, and at --summary."""
    output, summary = params.get("output"), params.get("summary")
    if output is None and summary is None:
        return
    from fdpipe.job.progress import EXIT_USAGE
    from fdpipe.job.urls import is_remote

    # a store's records are written by runs that reached it (a refusal here asks no server)
    output = None if output is None or is_remote(str(output)) else Path(output)
    from fdpipe.job.record import RunRecord

    message = error.format_message() if isinstance(error, click.ClickException) else str(error)
    fields = {"command": command_line(ctx), "input": params.get("input_"), "output": output}
    RunRecord(output, summary, fields).end("refused", EXIT_USAGE, message)


class RecordedCommand(click.Command):
    """``explain``: every refusal (exit 2) is recorded, those found while parsing too."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, list(args), parent, **extra)
        except click.ClickException as exc:
            if not extra.get("resilient_parsing"):  # what parses of the line: output, summary
                lenient = super().make_context(
                    info_name, list(args), parent, resilient_parsing=True
                )
                record_refusal(lenient, lenient.params, exc)
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, FdpipeError) as exc:
            if not ctx.meta.get(JOB_STARTED):
                record_refusal(ctx, ctx.params, exc)
            raise


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, systemd stopping a unit) ends the run as Ctrl-C does: nothing
    half-written is committed, the run record says ``interrupted``, exit 143."""
    from fdpipe.job.progress import Terminated

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread: leave signals to it
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@click.command(cls=RecordedCommand)
@click.option(
    "-i",
    "--input",
    "input_",
    required=True,
    # a str (no path_type): a URL keeps its "//"; a missing input is exit 3, not a usage error
    type=click.Path(),
    help="Image directory (walked recursively), list file, CSV/Parquet manifest; a URL "
    "(s3://bucket/prefix/, gs://, az://, a manifest of URLs); WebDataset shards "
    "('shards/train-{000000..000099}.tar'); a Parquet image table.",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(),
    help="The results table (Delta Lake): a folder, or s3://, gs://, az:// (a bucket and prefix).",
)
@storage_option
@model_options
@click.option("--artifacts", type=click.Path(path_type=Path), help="Exported model artifacts.")
@click.option("--runtime", type=click.Choice(RUNTIMES), default="auto", show_default=True)
@click.option(
    "--precision",
    type=click.Choice(PRECISION_CHOICES),
    default="fp32",
    show_default=True,
    help="Backbone and masked-head arithmetic: bf16 (CPUs with native bf16, CUDA), fp16 (CUDA).",
)
@click.option(
    "--method",
    "methods",
    multiple=True,
    default=("fdcam",),
    show_default=True,
    callback=parse_methods,
    help=f"Method specs, repeatable or comma-separated, options after a colon "
    f"(fdcam:threshold=0.9); all share one pass: {', '.join(METHOD_NAMES)}.",
)
@click.option(
    "--classes", help="Explain these classes, indices or names (tabby,281), not the top-k."
)
@click.option(
    "--top-k",
    type=click.IntRange(min=1),
    help="Explain the k highest logits (default 1); with --target-column, after the target.",
)
@click.option(
    "--target-column",
    help="Manifest column with each image's class (index or name) to explain.",
)
@click.option(
    "--batch-size",
    type=BatchSize(),
    default="auto",
    show_default=True,
    help="Images per forward pass, or auto: on a GPU the most its free memory holds, else 16.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=os.cpu_count() or 1,
    show_default="the CPU cores",
    help="Decode threads.",
)
@click.option(
    "--decode",
    type=click.Choice(DECODES),
    default="auto",
    show_default=True,
    help="Where JPEGs are decoded and preprocessed: on the model's device (nvJPEG on a GPU), "
    "the CPU (PIL), or auto: the device on a GPU.",
)
@click.option(
    "--part-size",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Images per part file (at most this much work is lost to a kill).",
)
@click.option("--shard", default="0/1", show_default=True, help="Explain shard i of n (i/n).")
@click.option("--overwrite", is_flag=True, help="Start over: remove this shard's parts first.")
@click.option(
    "--retry/--no-retry",
    default=True,
    show_default=True,
    help="Explain again the images that failed in earlier runs.",
)
@click.option("--prune", is_flag=True, help="Hide the rows of inputs that no longer exist.")
@click.option("--allow-empty", is_flag=True, help="An empty or missing input exits 0 instead of 3.")
@click.option(
    "--summary",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the run record (JSON) here; it is always in OUTPUT/_runs/.",
)
@click.option("--save-weights", is_flag=True, help="Store per-channel weights.")
@click.option("--engine", type=click.Choice(ENGINES), default="local", show_default=True)
@click.option("--address", help="Ray cluster address (--engine ray); default: a local Ray.")
@click.option(
    "--actors", type=click.IntRange(min=1), help="Ray model actors (default: per GPU/CPU)."
)
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    default=MAX_PIXELS,
    show_default=True,
    help="Decoded pixels per image at most (bounds memory); larger JPEGs are decoded reduced.",
)
@click.option(
    "--max-memory",
    type=ByteSize(),
    help="Memory each batch's perturbation work may hold at once (2G, 512M, bytes); "
    "default: a quarter of the available memory up to 1G, or half a GPU's free memory.",
)
@click.option(
    "--evaluate-sample",
    type=click.IntRange(min=1),
    help="Score a seeded random sample of N of this run's images by insertion / deletion and "
    "Average Drop / Increase with the maps just computed; means with bootstrap intervals go "
    "into the run record and `fdpipe report`.",
)
@click.option(
    "--evaluate-seed", type=int, default=0, show_default=True, help="Of --evaluate-sample."
)
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a TTY).")
# Aliases of method options, written into the --method specs (cli/options.method_alias).
@method_alias(
    "fdcam",
    "threshold",
    "--fd-threshold",
    type=FiniteFloat(0.0, 1.0),
    help="FD-CAM grouping quantile (0.95).",
)
@method_alias(
    "fdcam", "shift", "--fd-shift", type=FiniteFloat(), help="FD-CAM b in a*exp(s) - b (0.5)."
)
@method_alias(
    "fdcam",
    "grouping",
    "--fd-grouping/--no-fd-grouping",
    default=None,
    help="FD-CAM channel grouping.",
)
@method_alias(
    "fdcam",
    "scoring",
    "--fd-scoring",
    type=click.Choice(["both", "off"]),
    help="Switch-on+off or off only.",
)
@method_alias(
    "fdcam", "combination", "--fd-combination", type=click.Choice(["product", "exp", "exp_shift"])
)
@method_alias(
    "fdcam",
    "probabilities",
    "--fd-probabilities",
    is_flag=True,
    default=None,
    help="Score probabilities.",
)
@method_alias("fgcam", "base", "--base", type=click.Choice(FGCAM_BASES), help="FG-CAM base.")
@method_alias(
    "fgcam", "resolution", "--resolution", help='FG-CAM target: "input" or a layer like features.5.'
)
@method_alias(
    "fgcam", "denoise", "--denoise", is_flag=True, default=None, help="FG-CAM SVD denoising."
)
def explain(
    input_: str,
    output: str,
    storage_options: dict[str, Any],
    model: ModelRequest,
    artifacts: Path | None,
    runtime: str,
    precision: str,
    methods: list[MethodSpec],
    classes: str | None,
    top_k: int | None,
    target_column: str | None,
    batch_size: int | str,
    workers: int,
    decode: str,
    part_size: int,
    shard: str,
    overwrite: bool,
    retry: bool,
    prune: bool,
    allow_empty: bool,
    summary: Path | None,
    save_weights: bool,
    engine: str,
    address: str | None,
    actors: int | None,
    max_pixels: int,
    max_memory: int | None,
    evaluate_sample: int | None,
    evaluate_seed: int,
    progress: bool | None,
) -> None:
    """Explain every image of INPUT into a Parquet dataset at OUTPUT.

    A rerun explains only what is new: new paths, files whose content changed, images that
    failed before, methods or classes the output has no rows of; --prune hides removed inputs.
    Each run writes a JSON record to OUTPUT/_runs/.

    \b
    Exit codes:
      0  every image explained
      1  some images failed (each is logged with its path and reason)
      2  usage or configuration error (unknown model or method, bad weights file,
         an output made with another model, layer or preprocessing)
      3  nothing to do: the input is empty or missing (0 with --allow-empty)
      4  the output could not be written (disk full, file-size limit, I/O error):
         the parts written so far are kept; make room and rerun to continue
      130, 143  interrupted by Ctrl-C or SIGTERM (rerun to resume)

    Every run that knows its OUTPUT or --summary records how it ended, a refusal too.
    """
    if engine == "ray" and importlib.util.find_spec("ray") is None:
        raise click.UsageError("--engine ray needs Ray: pip install 'fdpipe[ray]'")
    # --classes with --top-k (or a target column) is refused, unless the top-k is a --config
    # file's default, which an explicit --classes replaces as any flag replaces the file's value.
    ctx = click.get_current_context()
    from_file = ctx.get_parameter_source("top_k") == click.core.ParameterSource.DEFAULT_MAP
    if from_file and classes is not None:
        top_k = None
    if classes is not None and (top_k is not None or target_column):
        raise click.UsageError(
            "--classes explains the same classes for every image: give it alone, not with "
            "--top-k or --target-column"
        )
    from fdpipe.job.config import JobConfig, output_location
    from fdpipe.job.inputs import parse_shard
    from fdpipe.job.run import run_job

    config = JobConfig(
        input=input_,
        output=output_location(output),
        storage_options=storage_options,
        model=model,
        artifacts=artifacts,
        runtime=runtime,
        precision=precision,
        methods=tuple(methods),
        classes=parse_classes(classes),
        top_k=(0 if target_column else 1) if top_k is None else top_k,  # 0: the target alone
        target_column=target_column,
        batch_size=batch_size,
        workers=workers,
        decode=decode,
        part_size=part_size,
        shard=parse_shard(shard),
        overwrite=overwrite,
        retry=retry,
        prune=prune,
        allow_empty=allow_empty,
        summary=summary,
        save_weights=save_weights,
        engine=engine,
        address=address,
        actors=actors,
        progress=progress,
        max_pixels=max_pixels,
        max_memory=max_memory,
        evaluate_sample=evaluate_sample or 0,
        evaluate_seed=evaluate_seed,
        command=command_line(ctx),
    )
    ctx.meta[JOB_STARTED] = True
    with sigterm_as_interrupt():
        done = run_job(config)
    click.echo(f"{output}: {done}")
    raise SystemExit(done.exit_code)
