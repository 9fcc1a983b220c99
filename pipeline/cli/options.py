"""What the commands share: model, logging and configuration options, and parsing of method and
class lists. Torch-free (``fdpipe --help`` imports it)."""

from __future__ import annotations

import functools
import logging
import math
import shlex
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from fdpipe.cli.choices import (
    DEFAULT_COLORMAP,
    DEFAULT_MODEL,
    METHOD_NAMES,
    NORMALISATIONS,
    RESIZE_MODES,
    SCORES,
)
from fdpipe.errors import FdpipeError
from fdpipe.methods import MethodSpec, split_method_specs

if TYPE_CHECKING:
    from fdpipe.display import Colormap, Display
    from fdpipe.export.request import ModelRequest

Command = TypeVar("Command", bound=Callable[..., object])
ENV_PREFIX = "FDPIPE"  # FDPIPE_<COMMAND>_<OPTION>, e.g. FDPIPE_EXPLAIN_BATCH_SIZE=8


class ConfigurationError(click.ClickException):
    """One line, no usage text, exit 2 as click's usage errors: the command line parsed, but its
    settings cannot work (unknown model, bad weights file, an output made by another model)."""

    exit_code = 2


def _floats(
    ctx: click.Context, param: click.Parameter, text: str | None
) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(part) for part in split_list(text))
    except ValueError:
        raise click.BadParameter(f"expected numbers like 0.5,0.5,0.5, got {text!r}") from None
    if not values:
        raise click.BadParameter("no value given")
    if not all(math.isfinite(v) for v in values):
        raise click.BadParameter(f"{param.name} must be finite, got {text!r}")
    if len(values) not in (1, 3):  # checked here, before torch loads: models take 1 or 3 channels
        raise click.BadParameter(f"give one value (every channel) or three (R,G,B), got {text!r}")
    return values


def _layer(ctx: click.Context, param: click.Parameter, text: str | None) -> str | None:
    if text is not None and not text.strip():  # "" would silently mean the default layer
        raise click.BadParameter("an empty layer name: leave --layer out for the model's default")
    return text


def _size(ctx: click.Context, param: click.Parameter, text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        values = [int(part) for part in split_list(text)]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(8 <= v <= 4096 for v in values):
        raise click.BadParameter(f"expected a size like 299 or 240,320 (8..4096), got {text!r}")
    return (values[0], values[-1])


class PathOrWord(click.Path):
    """A file, or one of ``words`` (kept as it is, in a config file too)."""

    def __init__(self, *words: str) -> None:
        super().__init__(dir_okay=False, path_type=str)
        self.words = words

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return value if value in self.words else super().convert(value, param, ctx)


def _weights_map(ctx: click.Context, param: click.Parameter, text: str | None) -> object:
    from fdpipe.export.request import ModelError, weights_map_of  # torch-free

    try:
        return weights_map_of(text)  # checked and read here, before torch loads
    except ModelError as exc:
        raise click.BadParameter(str(exc)) from None


def _channels(ctx: click.Context, param: click.Parameter, text: str | None) -> int | None:
    return int(text) if text else None


# The model options' parameter names: ModelRequest's fields (``--model`` is ``source``,
# the score ``model_score``: evaluate has a --score of its own) and PreprocessOptions' fields.
_REQUEST_PARAMS = (
    "source", "layer", "weights", "weights_map", "class_names", "trust_pickle", "offline",
)  # fmt: skip
_PREPROCESS_PARAMS = ("size", "resize", "crop_fraction", "normalisation", "mean", "std", "channels")


def model_request(values: dict[str, Any]) -> ModelRequest:
    """The ``ModelRequest`` of the model options' values (popped from ``values``)."""
    from fdpipe.export.request import ModelRequest, PreprocessOptions

    preprocess = PreprocessOptions(**{name: values.pop(name) for name in _PREPROCESS_PARAMS})
    return ModelRequest(
        **{name: values.pop(name) for name in _REQUEST_PARAMS},
        preprocess=None if preprocess == PreprocessOptions() else preprocess,
        score=values.pop("model_score"),
    )


def model_options(
    command: Command | None = None,
    *,
    default_model: str | None = DEFAULT_MODEL,
    score_flag: str = "--score",
) -> Any:
    """The model options: ``--model``, ``--layer``, ``--weights``, class names, score and
    preprocessing (``default_model=None``: taken from elsewhere; ``score_flag`` where the command
    has a ``--score`` of its own). The command receives them as one ``model`` argument, a
    ``ModelRequest``."""
    options = (
        click.option(
            "--model",
            "source",
            default=default_model,
            show_default=default_model is not None,
            help="Registered or torchvision model, timm:NAME, package.module:factory, "
            "file.py:factory, or a TorchScript file (offline: squeezenet1_1)."
            + ("" if default_model else " Default: the one the maps were made with."),
        ),
        click.option(
            "--layer",
            callback=_layer,
            help="Target layer (dotted module path); default: the model's, else the last module "
            "giving a (B, K, h, w) map.",
        ),
        click.option(
            "--weights",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="State dict (any class count) instead of the model's usual weights.",
        ),
        click.option(
            "--weights-map",
            type=PathOrWord("by-position"),
            callback=_weights_map,
            metavar="by-position|FILE.json",
            help="How --weights' keys name the model's tensors when they differ: by-position "
            "(in order; count and shapes must match) or a JSON object of checkpoint key -> "
            "model key (other keys keep their names).",
        ),
        click.option(
            "--class-names",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="Class names: one per line, or a JSON list or {index: name}.",
        ),
        click.option(
            score_flag,
            "model_score",
            type=click.Choice(SCORES),
            default="softmax",
            show_default=True,
            help="What the stored probability is: softmax, sigmoid (multi-label) or none (logit).",
        ),
        click.option(
            "--input-size",
            "size",
            callback=_size,
            help="Model input size: 299 or H,W (default: the model's).",
        ),
        click.option(
            "--resize",
            type=click.Choice(RESIZE_MODES),
            help="squash the whole image, or crop (shorter side, then centre crop).",
        ),
        click.option(
            "--crop-fraction",
            type=click.FloatRange(0, 1, min_open=True),
            help="With --resize crop: crop size / shorter side (default 0.875 or the model's).",
        ),
        click.option(
            "--normalisation",
            "--normalization",
            "normalisation",
            type=click.Choice(NORMALISATIONS),
            help="Named input normalisation (default: the model's).",
        ),
        click.option(
            "--mean", callback=_floats, help="Mean on [0, 1] pixels: 0.5 (every channel) or R,G,B."
        ),
        click.option(
            "--std", callback=_floats, help="Std on [0, 1] pixels: 0.5 (every channel) or R,G,B."
        ),
        click.option(
            "--channels",
            type=click.Choice(["1", "3"]),
            callback=_channels,
            help="1 for grayscale models.",
        ),
        click.option(
            "--trust-pickle",
            is_flag=True,
            help="Allow --model FILE to be a pickled full model (unpickling runs its code).",
        ),
        click.option(
            "--offline/--online",
            default=None,
            help="Never fetch published weights (default: FDPIPE_OFFLINE, else on first use).",
        ),
    )

    def decorate(command: Command) -> Command:
        @functools.wraps(command)
        def wrapper(*args: object, **kwargs: Any) -> object:
            kwargs["model"] = model_request(kwargs)
            return command(*args, **kwargs)

        decorated: Command = wrapper  # type: ignore[assignment]
        for option in reversed(options):
            decorated = option(decorated)
        return decorated

    return decorate if command is None else decorate(command)


# Logging: -v/--verbose and --quiet work before and after the subcommand and add up.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _set_log_level(ctx: click.Context, param: click.Parameter, value: int | bool) -> None:
    meta = ctx.find_root().meta
    key = "fdpipe.quiet" if param.name == "quiet" else "fdpipe.verbosity"
    meta[key] = meta.get(key, 0) + int(value)
    level = (
        logging.WARNING
        if meta.get("fdpipe.quiet")
        else logging.INFO - 10 * meta.get("fdpipe.verbosity", 0)
    )
    logging.basicConfig(format=LOG_FORMAT)  # no-op where logging is already set up
    logging.getLogger().setLevel(max(level, logging.DEBUG))


def normal(key: str) -> str:
    return key.replace("-", "_")


def option_names(command: click.Command) -> dict[str, str]:
    """Config keys -> parameter names: ``input``, ``method``, ``fd_threshold``, ``input_``..."""
    names = {}
    for param in command.params:
        if param.name is None:
            continue
        names[param.name] = param.name
        for option in param.opts:
            if option.startswith("--"):
                names[normal(option[2:])] = param.name
    return names


def config_value(param: click.Parameter, value: object) -> object:
    """A TOML value as the option takes it: a list for repeatable options, a comma-joined string
    for list-like text options (``classes = [1, 2]``), else one scalar."""
    if isinstance(value, dict):
        raise ValueError("expected a value, not a table")
    if param.multiple:
        return value if isinstance(value, list) else [value]
    if isinstance(value, list):
        if isinstance(param.type, click.types.StringParamType) and all(
            isinstance(v, str | int | float) for v in value
        ):
            return ",".join(str(v) for v in value)
        raise ValueError("takes one value, not a list")
    return value


def beside(config: Path, param: click.Parameter, value: object) -> object:
    """A relative path in a config file means beside the file, so that the same file works from
    any working directory (a path on the command line or in a variable stays the shell's)."""
    if not isinstance(param.type, click.Path) or value in getattr(param.type, "words", ()):
        return value
    if isinstance(value, list):
        return [beside(config, param, v) for v in value]
    if isinstance(value, str) and value and "://" not in value:  # a URL is not beside anything
        return str(config.parent / Path(value).expanduser())  # an absolute path stays itself
    return value


def _read_config(ctx: click.Context, param: click.Parameter, path: Path | None) -> None:
    """``--config FILE``: TOML whose keys are option names, in a table per command
    (``[explain]``) or at the top for every command that has the option. It sets click's
    ``default_map``, so options on the command line and ``FDPIPE_*`` variables still win."""
    if path is None:
        return
    if not path.is_file():  # a FIFO or device would block the read
        raise click.BadParameter(f"{path} is not a regular file", ctx=ctx, param=param)
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise click.BadParameter(f"{path}: {exc}", ctx=ctx, param=param) from None
    root = ctx.find_root().command
    commands = root.commands if isinstance(root, click.Group) else {}
    shared = {k: v for k, v in table.items() if not isinstance(v, dict)}
    sections = {k: v for k, v in table.items() if isinstance(v, dict)}

    def fail(message: str) -> None:
        raise click.BadParameter(f"{path}: {message}", ctx=ctx, param=param)

    if unknown := [k for k in sections if k not in commands]:
        fail(f"no command {unknown[0]!r}")
    default_map: dict[str, dict[str, object]] = {}
    used: set[str] = set()  # shared keys some command takes (under its option or parameter name)
    for name, command in commands.items():
        known = option_names(command)
        if bad := [k for k in sections.get(name, {}) if normal(k) not in known]:
            fail(f"{name} has no option {bad[0]!r}")
        values = {k: v for k, v in shared.items() if normal(k) in known} | sections.get(name, {})
        used |= values.keys() & shared.keys()
        params = {p.name: p for p in command.params}
        default_map[name] = {}
        for key, value in values.items():
            option = params[known[normal(key)]]
            try:
                value = config_value(option, value)
            except ValueError as exc:
                fail(f"{name}.{key}: {exc}")
            default_map[name][known[normal(key)]] = beside(path, option, value)
    if orphans := [k for k in shared if k not in used]:
        fail(f"no command has an option {orphans[0]!r}")
    if ctx.parent is None:
        ctx.default_map = default_map
    else:  # on a subcommand: its own table
        ctx.default_map = default_map.get(ctx.info_name or "", {})


def bind_environment(command: click.Command) -> click.Command:
    """``FDPIPE_<COMMAND>_<OPTION>`` after the option's own name (``FDPIPE_EXPLAIN_METHOD``,
    ``FDPIPE_EXPLAIN_INPUT``), besides click's name after the parameter."""
    for param in command.params:
        if isinstance(param, click.Option) and param.envvar is None:
            param.envvar = [
                f"{ENV_PREFIX}_{normal(command.name or '')}_{normal(opt[2:])}".upper()
                for opt in param.opts
                if opt.startswith("--")
            ]
    return command


def unknown_variables(group: click.Group, environ: Mapping[str, str]) -> list[str]:
    """``FDPIPE_*`` variables no option reads (a typo would otherwise be ignored silently)."""
    from fdpipe.export.request import OFFLINE_ENV  # torch-free

    known = {OFFLINE_ENV}
    for prefix, command in [(ENV_PREFIX, group)] + [
        (f"{ENV_PREFIX}_{normal(name).upper()}", c) for name, c in group.commands.items()
    ]:
        for param in command.params:
            envvar = param.envvar or []
            known |= {envvar} if isinstance(envvar, str) else set(envvar)
            known.add(f"{prefix}_{(param.name or '').upper()}")  # click's auto_envvar_prefix
    return sorted(k for k in environ if k.startswith(f"{ENV_PREFIX}_") and k not in known)


def common_options(command: Command) -> Command:
    """``-v/--verbose``, ``--quiet`` and ``--config FILE``: on the group and on every command."""
    for option in (
        click.option(
            "--config",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            is_eager=True,
            expose_value=False,
            callback=_read_config,
            help="TOML file of option values ([explain] batch_size = 8, ...).",
        ),
        click.option(
            "--quiet",
            is_flag=True,
            expose_value=False,
            callback=_set_log_level,
            help="Warnings (failed images) and errors only.",
        ),
        click.option(
            "-v",
            "--verbose",
            count=True,
            expose_value=False,
            callback=_set_log_level,
            help="More log output (-vv for debug).",
        ),
    ):
        command = option(command)
    return command


class FiniteFloat(click.ParamType):
    """A float that is finite (``nan`` and ``inf`` refused), optionally within [low, high]."""

    name = "number"

    def __init__(self, low: float | None = None, high: float | None = None) -> None:
        self.low, self.high = low, high

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if (self.low is not None and number < self.low) or (
            self.high is not None and number > self.high
        ):
            self.fail(f"{number:g} is not in [{self.low:g}, {self.high:g}]", param, ctx)
        return number


class FdpipeGroup(click.Group):
    """The ``fdpipe`` group, around every command: an ``FdpipeError`` is printed as its one-line
    message and exits with its code (caught here, once); Ctrl-C exits 130 (128 + SIGINT),
    SIGTERM (where a command handles it, as ``explain`` does) 143, as shells expect, not click's
    1, the code of "an image failed". It keeps the arguments it was given, for the command line
    a run records (:func:`command_line`)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["fdpipe.args"] = list(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            click.echo("interrupted", err=True)
            raise SystemExit(getattr(exc, "exit_code", 130)) from None
        except FdpipeError as exc:  # as click shows its own errors, without a traceback
            click.echo(f"Error: {' '.join(str(exc).split())}", err=True)
            raise SystemExit(exc.exit_code) from None


def command_line(ctx: click.Context) -> str | None:
    """The command line as given (``fdpipe explain -i DIR ...``), from the arguments click parsed;
    None where a command runs outside the ``fdpipe`` group."""
    args = ctx.meta.get("fdpipe.args")
    return None if args is None else shlex.join(["fdpipe", *args])


def split_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_classes(text: str | None) -> tuple[int | str, ...] | None:
    """``--classes``: indices or class names (``tabby,281``), resolved once the model is loaded."""
    if text is None:
        return None
    parts = split_list(text)
    classes = tuple(int(p) if p.lstrip("-").isdigit() else p for p in parts)
    if not classes:
        raise click.BadParameter(f"--classes takes class indices or names like 281,tabby: {text!r}")
    if len(set(classes)) != len(classes):
        raise click.BadParameter(f"--classes {text!r} repeats a class")
    return classes


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
    used: set[str] = set()  # which alias families some spec took
    for text in texts:
        for piece in split_method_specs(text):
            spec = MethodSpec.parse(piece)
            if spec.name not in METHOD_NAMES:
                raise click.BadParameter(
                    f"unknown method {spec.name!r}; choose from {', '.join(METHOD_NAMES)}",
                    param_hint="--method",
                )
            aliases: dict[str, object] = {}
            if spec.name == "fdcam":
                aliases = dict(fd)
                used.add("fdcam")
            elif spec.name == "fgcam":
                aliases = dict(fg)
                used.add("fgcam")
                if spec.options.get("base", fg.get("base", "gradcam")) == "fdcam":
                    aliases |= fd
                    used.add("fdcam")
            clash = [k for k, v in aliases.items() if spec.options.get(k, v) != v]
            if clash:
                raise click.BadParameter(
                    f"{spec.label!r} sets {clash[0]}={spec.options[clash[0]]!r} and a flag sets "
                    f"{clash[0]}={aliases[clash[0]]!r}",
                    param_hint="--method",
                )
            if any(done.label == spec.label for done in specs):
                raise click.BadParameter(f"{spec.label!r} is given twice", param_hint="--method")
            spec = MethodSpec(spec.label, spec.name, aliases | spec.options)
            try:
                spec.build()  # options are checked where they are defined: refused before work
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="--method") from None
            specs.append(spec)
    if not specs:
        raise click.BadParameter("no method given", param_hint="--method")
    for family, flags, prefix in (("fdcam", fd, "--fd-"), ("fgcam", fg, "--")):
        if flags and family not in used:  # a flag no method takes would be silently ignored
            flag = prefix + next(iter(flags)).replace("_", "-")
            raise click.BadParameter(f"{flag} applies to {family}: add --method {family}")
    return specs


def method_alias(method: str, key: str, *decls: str, **attrs: Any) -> Callable[[Command], Command]:
    """An option that stands for the ``KEY=VALUE`` of every ``METHOD`` spec in ``--method``
    (``--fd-shift 0.3`` for ``fdcam:shift=0.3``). Eager, so that its value is known when
    ``--method`` is parsed (:func:`parse_methods`); it gives the command no argument."""

    def record(ctx: click.Context, param: click.Parameter, value: object) -> None:
        if value is not None:
            ctx.meta.setdefault(ALIASES, {}).setdefault(method, {})[key] = value

    alias = f"Alias of --method {method}:{key}=..."
    attrs["help"] = f"{attrs['help']} {alias}." if attrs.get("help") else f"{alias}."
    return click.option(*decls, expose_value=False, is_eager=True, callback=record, **attrs)


ALIASES = "fdpipe.method_aliases"


def parse_methods(
    ctx: click.Context, param: click.Parameter, texts: Sequence[str]
) -> list[MethodSpec]:
    """``--method``'s callback: its specs, with the alias options' values written into them."""
    if ctx.resilient_parsing:  # a parse for what it can read (a refusal's record): no checks
        return []
    aliases = ctx.meta.get(ALIASES, {})
    return method_specs(texts, aliases.get("fdcam"), aliases.get("fgcam")) if texts else []


def _parse_display(ctx: click.Context, param: click.Parameter, value: str) -> Display | None:
    from fdpipe.display import parse_display  # numpy: not at --help time

    try:
        return parse_display(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _parse_colormap(ctx: click.Context, param: click.Parameter, value: str) -> Colormap:
    from fdpipe.display import colormap

    try:
        return colormap(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


display_option = click.option(
    "--display",
    default="auto",
    show_default=True,
    callback=_parse_display,
    help="How maps are shown: auto (FG-CAM: pixel, others: minmax), minmax, pixel "
    "(clipped at p99, gamma 0.7, over a dimmed photo) or percentile=P[,gamma=G][,weighted=true].",
)
colormap_option = click.option(
    "--colormap",
    default=DEFAULT_COLORMAP,
    show_default=True,
    callback=_parse_colormap,
    help="jet (built in) or any matplotlib colormap when matplotlib is installed.",
)


class OutputLocation(click.ParamType):
    """An explain output to read: a local folder (that exists, when ``exists``), or the URL of
    one on an object store (``s3://bucket/prefix``, kept as text)."""

    name = "output"

    def __init__(self, exists: bool = True) -> None:
        self.local = click.Path(exists=exists, file_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from fdpipe.job.urls import is_remote

        text = str(value)
        if is_remote(text):
            return text
        return self.local.convert(text.removeprefix("file://"), param, ctx)


def _storage_options(
    ctx: click.Context, param: click.Parameter, pairs: tuple[str, ...]
) -> dict[str, Any]:
    if not pairs:
        return {}
    from fdpipe.job.sources.store import parse_storage_options

    try:
        return parse_storage_options(pairs)
    except FdpipeError as exc:
        raise click.BadParameter(str(exc)) from None


storage_option = click.option(
    "--storage-option",
    "storage_options",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_storage_options,
    help="Option of an object store's filesystem (fsspec's names; AWS_* variables work too), "
    "repeatable: endpoint_url=..., anon=true.",
)
