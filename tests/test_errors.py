"""One base for fdpipe's own errors: every error class the package defines derives from it."""

from __future__ import annotations

import importlib
import pkgutil

import click
import fdpipe
import fdpipe.export
import fdpipe.kernels
from fdpipe.errors import FdpipeError


def test_every_error_class_of_the_package_derives_from_fdpipe_error() -> None:
    errors = set()
    packages = [fdpipe, fdpipe.export, fdpipe.kernels]  # export/ and kernels/ are folders apart
    names = {i.name for p in packages for i in pkgutil.walk_packages(p.__path__, f"{p.__name__}.")}
    for name in sorted(names):
        if name == "fdpipe.__main__":  # runs the command line
            continue
        try:
            module = importlib.import_module(name)
        except ImportError:  # an optional dependency (TensorRT, Ray): its module is not checked
            continue
        errors |= {
            value
            for value in vars(module).values()
            if isinstance(value, type) and issubclass(value, Exception) and value.__module__ == name
        }
    assert len(errors) >= 17  # ModelError, InputError, ResumeError, ExportError, ...
    # click's own exceptions (the command line's usage errors) are click's to show
    foreign = [e for e in errors if not issubclass(e, FdpipeError | click.ClickException)]
    assert not foreign, f"errors without the FdpipeError base: {foreign}"
