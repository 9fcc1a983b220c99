"""The ``fdpipe`` command line.

The command modules import torch and the models inside their command functions, so that
``fdpipe --help`` and ``--version`` answer at once; their choices come from ``cli/choices.py``.
"""

from __future__ import annotations

import os

import click
from fdpipe import __version__
from fdpipe.cli.bench import bench
from fdpipe.cli.demo import demo
from fdpipe.cli.evaluate import evaluate
from fdpipe.cli.explain import explain
from fdpipe.cli.export import export
from fdpipe.cli.options import (
    ENV_PREFIX,
    FdpipeGroup,
    bind_environment,
    common_options,
    unknown_variables,
)
from fdpipe.cli.render import render
from fdpipe.cli.report import report
from fdpipe.cli.table import compact, migrate, status, vacuum

COMMANDS = (
    explain,
    render,
    report,
    status,
    compact,
    vacuum,
    migrate,
    demo,
    evaluate,
    export,
    bench,
)


@click.group(
    cls=FdpipeGroup,
    context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": ENV_PREFIX},
)
@click.version_option(__version__, prog_name="fdpipe")
@common_options
def main() -> None:
    """Class activation maps (FD-CAM and baselines) for CNN classifiers, at dataset scale.

    Any option can also come from a TOML file (--config FILE, a table per command) or from an
    environment variable FDPIPE_<COMMAND>_<OPTION> (e.g. FDPIPE_EXPLAIN_BATCH_SIZE=8); the
    command line wins over the variables, and they over the file.
    """
    group = click.get_current_context().command
    assert isinstance(group, click.Group)
    for name in unknown_variables(group, os.environ):
        click.echo(f"warning: unknown variable {name} (no option reads it): ignored", err=True)


for command in COMMANDS:
    main.add_command(bind_environment(common_options(command)))
