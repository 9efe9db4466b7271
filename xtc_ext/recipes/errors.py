"""The error recipes raise for a bad command-line option value or combination."""

from xtc_ext.engine.errors import UsageError

__all__ = ["option_error"]


def option_error(message: str) -> UsageError:
    """A :class:`~xtc_ext.engine.errors.UsageError` (exit code 2, ``str()`` ``"error: <message>"``): a bad
    option value or combination (``message`` names the option)."""
    return UsageError(message)
