"""Click options shared by every command that loads a model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click
from fdpipe.export.models import DEFAULT_MODEL

Command = TypeVar("Command", bound=Callable[..., object])

_MODEL_OPTIONS = (
    click.option(
        "--model",
        default=DEFAULT_MODEL,
        show_default=True,
        help="Registered model or torchvision classifier (offline: squeezenet1_1).",
    ),
    click.option("--layer", help="Target layer (dotted module path); default: the model's."),
    click.option(
        "--weights",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Weights file (a state dict) instead of the model's usual source.",
    ),
)


def model_options(command: Command) -> Command:
    """``--model``, ``--layer`` and ``--weights``."""
    for option in reversed(_MODEL_OPTIONS):
        command = option(command)
    return command
