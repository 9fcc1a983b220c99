"""The one base of fdpipe's own errors: a message for the user, one line, and an exit code.

The command line catches ``FdpipeError`` once, around every command (``cli/options.py``), and
prints its message without a traceback; each error class says which documented exit code it
means (2: a usage or configuration error found before work starts, the default).
"""

from __future__ import annotations


class FdpipeError(Exception):
    """An input, setting, model or file that fdpipe cannot use, said in one line."""

    exit_code = 2


__all__ = ["FdpipeError"]
