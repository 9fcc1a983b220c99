"""What the commands share: the model options, and parsing of method and class lists."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import click
from fdpipe.export.models import DEFAULT_MODEL
from fdpipe.kernels import METHODS
from fdpipe.methods import MethodSpec, split_method_specs

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


def split_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_classes(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(part) for part in split_list(text))
    except ValueError:
        raise click.BadParameter(
            f"--classes takes class indices like 1,2,3, got {text!r}"
        ) from None


def method_specs(
    texts: Sequence[str],
    fd_aliases: Mapping[str, object] | None = None,
    fg_aliases: Mapping[str, object] | None = None,
) -> list[MethodSpec]:
    """``--method`` values (repeatable; comma-separated ``name:key=value`` specs) as specs.

    The ``--fd-*`` flags are aliases of FD-CAM options: they go to every ``fdcam`` spec and to an
    ``fgcam`` spec on an ``fdcam`` base; the FG-CAM flags go to ``fgcam`` specs. A flag that
    contradicts an option written in the spec, an unknown method or a repeated one is an error.
    """
    fd, fg = dict(fd_aliases or {}), dict(fg_aliases or {})
    specs: list[MethodSpec] = []
    for text in texts:
        for piece in split_method_specs(text):
            spec = MethodSpec.parse(piece)
            if spec.name not in METHODS:
                raise click.BadParameter(
                    f"unknown method {spec.name!r}; choose from {', '.join(METHODS)}",
                    param_hint="--method",
                )
            aliases: dict[str, object] = {}
            if spec.name == "fdcam":
                aliases = dict(fd)
            elif spec.name == "fgcam":
                aliases = dict(fg)
                if spec.options.get("base", fg.get("base", "gradcam")) == "fdcam":
                    aliases |= fd
            clash = [k for k, v in aliases.items() if spec.options.get(k, v) != v]
            if clash:
                raise click.BadParameter(
                    f"{spec.label!r} sets {clash[0]}={spec.options[clash[0]]!r} and a flag sets "
                    f"{clash[0]}={aliases[clash[0]]!r}",
                    param_hint="--method",
                )
            if any(done.label == spec.label for done in specs):
                raise click.BadParameter(f"{spec.label!r} is given twice", param_hint="--method")
            specs.append(MethodSpec(spec.label, spec.name, aliases | spec.options))
    if not specs:
        raise click.BadParameter("no method given", param_hint="--method")
    return specs
