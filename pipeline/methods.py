"""Method specs: ``name`` or ``name:key=value,...`` strings (``fdcam:grouping=false``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the kernels (torch) load when a method is built, not when a spec is parsed
    from fdpipe.kernels import CAMMethod


def parse_option_value(text: str) -> object:
    """``true``/``false`` -> bool, then int, then float, else the string itself."""
    if text.lower() in {"true", "false"}:
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@dataclass(frozen=True)
class MethodSpec:
    """A report row: ``name`` or ``name:key=value,...`` (``fdcam:grouping=false,scoring=off``)."""

    label: str
    name: str
    options: dict[str, object]

    @classmethod
    def parse(cls, text: str) -> MethodSpec:
        name, _, rest = text.strip().partition(":")
        options = {}
        for pair in filter(None, (part.strip() for part in rest.split(","))):
            key, sep, value = pair.partition("=")
            if not sep:
                raise ValueError(f"method option {pair!r} in {text!r} is not key=value")
            options[key.strip()] = parse_option_value(value.strip())
        return cls(text.strip(), name.strip(), options)

    def build(self, **extra: object) -> CAMMethod:
        from fdpipe.kernels import make_method

        try:
            return make_method(self.name, **self.options, **extra)
        except TypeError as exc:
            raise ValueError(f"bad options for {self.label!r}: {exc}") from exc


def build_methods(
    methods: str | MethodSpec | CAMMethod | Sequence[str | MethodSpec | CAMMethod],
    options: Mapping[str, object] | None = None,
) -> dict[str, CAMMethod]:
    """Methods by report label from names, specs or instances: the one place methods are built.

    ``options`` go to a single named method (``explain(model, x, "fdcam", shift=0.3)``).
    """
    from fdpipe.kernels import CAMMethod

    items: list[str | MethodSpec | CAMMethod] = (
        [methods] if isinstance(methods, str | MethodSpec | CAMMethod) else list(methods)
    )
    if options and not isinstance(methods, str | MethodSpec):  # one named method only
        raise ValueError(
            "keyword options apply to one named method; for several, use specs like "
            "'fdcam:grouping=false' or CAMMethod instances"
        )
    built: dict[str, CAMMethod] = {}
    for item in items:
        if isinstance(item, CAMMethod):
            label, method = item.name, item
        else:
            spec = item if isinstance(item, MethodSpec) else MethodSpec.parse(item)
            label, method = spec.label, spec.build(**(options or {}))
        if label in built:  # the second would silently replace the first
            raise ValueError(f"method {label!r} is given twice")
        built[label] = method
    return built


def split_method_specs(text: str) -> list[str]:
    """Comma-separated specs, where a ``key=value`` piece continues the spec before it."""
    specs: list[str] = []
    for piece in filter(None, (part.strip() for part in text.split(","))):
        if "=" in piece and ":" not in piece and specs:
            specs[-1] += f",{piece}"
        else:
            specs.append(piece)
    return specs
