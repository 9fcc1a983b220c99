"""``fdpipe export``: ONNX graphs (and TensorRT engines) of a model split at its target layer."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import click
from fdpipe.cli.choices import OPSET
from fdpipe.cli.options import model_options

if TYPE_CHECKING:
    from fdpipe.export.request import ModelRequest


@click.command("export")
@model_options
@click.option(
    "-o", "--output", required=True, type=click.Path(path_type=Path), help="Artifact directory."
)
@click.option("--opset", type=click.IntRange(min=18), default=OPSET, show_default=True)
@click.option("--trt", is_flag=True, help="Also build TensorRT engines (CUDA GPU + tensorrt).")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16"]),
    default="fp32",
    show_default=True,
    help="fp16: also write FP16 graphs (*.fp16.onnx, for ONNX Runtime CUDA) and, with --trt, "
    "build FP16 engines from them.",
)
@click.option("--fp16", is_flag=True, help="Same as --precision fp16.")
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Largest image batch of the TensorRT optimisation profile.",
)
def export(
    model: ModelRequest,
    output: Path,
    opset: int,
    trt: bool,
    precision: str,
    fp16: bool,
    max_batch: int,
) -> None:
    """Write backbone/head/masked-head ONNX graphs and manifest.json to OUTPUT.

    Each graph is checked against PyTorch with ONNX Runtime; OUTPUT is only replaced once
    everything, engines included, has been built.
    """
    from fdpipe.export.onnx import check_export_target, export_model
    from fdpipe.export.tensorrt import EngineOptions, build_engines, tensorrt_missing

    precision = "fp16" if fp16 else precision
    if trt and (missing := tensorrt_missing()):
        raise click.ClickException(f"--trt: {missing}. Nothing was written.")
    check_export_target(output)  # files export did not write are never replaced
    engines = None
    if trt:
        options = EngineOptions(precision=precision, max_batch=max_batch)
        engines = partial(build_engines, options=options)
    loaded = model.load()
    manifest = export_model(loaded, output, opset=opset, engines=engines, precision=precision)
    kinds = ", ".join(f"{k}: {v}" for k, v in manifest.masked_head.items())
    click.echo(f"exported {loaded.name} at {loaded.layer} to {output} ({kinds})")
