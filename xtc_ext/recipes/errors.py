"""The error recipes raise for a bad command-line option value or combination."""

__all__ = ["option_error"]


def option_error(message: str) -> SystemExit:
    """``SystemExit("error: <message>")``: a bad option value or combination (``message`` names the option)."""
    return SystemExit(f"error: {message}")
