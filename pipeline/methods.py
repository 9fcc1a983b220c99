"""Method specs: ``name`` or ``name:key=value,...`` strings (``fdcam:grouping=false``)."""

from __future__ import annotations

from dataclasses import dataclass

from fdpipe.kernels import CAMMethod, make_method


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

    def build(self) -> CAMMethod:
        try:
            return make_method(self.name, **self.options)
        except TypeError as exc:
            raise ValueError(f"bad options for {self.label!r}: {exc}") from exc


def split_method_specs(text: str) -> list[str]:
    """Comma-separated specs, where a ``key=value`` piece continues the spec before it."""
    specs: list[str] = []
    for piece in filter(None, (part.strip() for part in text.split(","))):
        if "=" in piece and ":" not in piece and specs:
            specs[-1] += f",{piece}"
        else:
            specs.append(piece)
    return specs
