"""The one exception type the library raises for anything a user can fix.

Logic code raises `CifarError` with a message that names the file or option and the fix;
only `exits.py`, around the commands, turns it into a one-line message and an exit code.
"""

import math


class CifarError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


class ImageDecodeError(CifarError):
    """One image file could not be turned into pixels (reported per file, never fatal)."""


def check_finite(**options) -> None:
    """Refuse NaN and infinity for the named options: typer's min and max let NaN through (every
    comparison with it is false), and no figure of ours means anything at NaN."""
    for name, value in options.items():
        if value is not None and not math.isfinite(value):
            raise CifarError(f"--{name.replace('_', '-')} {value}: give a finite number")


def first_line(error: BaseException, limit: int = 200) -> str:
    """A third-party exception's message cut to one line, for our one-line errors."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:limit]
