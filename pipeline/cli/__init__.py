"""The ``fdpipe`` command line."""

from __future__ import annotations

import logging

import click
from fdpipe import __version__
from fdpipe.cli.bench import bench
from fdpipe.cli.demo import demo
from fdpipe.cli.evaluate import evaluate
from fdpipe.cli.explain import explain
from fdpipe.cli.export import export
from fdpipe.cli.render import render


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fdpipe")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """Class activation maps (FD-CAM and baselines) for CNN classifiers, at dataset scale."""
    level = logging.WARNING - 10 * min(verbose + 1, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


for command in (explain, render, demo, evaluate, export, bench):
    main.add_command(command)
