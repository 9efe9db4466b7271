"""Bad command-line arguments: :class:`UsageError`, exit code 2 as argparse's own errors (docs/training.md,
"Failures: non-finite losses, disk errors, kill -9, exit codes")."""

from __future__ import annotations

import sys
from typing import NoReturn

__all__ = ["UsageError", "exit_with_error"]


class UsageError(SystemExit):
    """A bad option value or combination, found after argparse has parsed the command line (the message names
    the option). A :class:`SystemExit` with exit code 2, the code of argparse's own errors; the programs
    (``python -m xtc_ext.train``, ``python -m xtc_ext.evaluate``) print it as argparse does, one line
    ``PROG: error: MESSAGE`` (:func:`exit_with_error`). ``str()`` is ``"error: MESSAGE"``."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = str(message)

    def __str__(self) -> str:
        return f"error: {self.message}"


def exit_with_error(prog: str, message: object, code: int) -> NoReturn:
    """Print ``PROG: error: MESSAGE`` (one line, argparse's format) to stderr and exit with ``code``."""
    text = message.message if isinstance(message, UsageError) else str(message)
    print(f"{prog}: error: {text}", file=sys.stderr)
    raise SystemExit(code) from None
