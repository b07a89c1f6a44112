"""The one exception type for bad user input.

Every stage raises `UserError` for a problem the user can fix (a malformed line, a missing file,
an unknown config key). The CLI prints it as one line and exits with status 2; nothing else
should print a traceback for bad input. This module imports nothing, so `kernels/` excepted,
every layer may use it.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, reported as one line, e.g. ``corpus.txt:17: invalid UTF-8``."""

    def __init__(self, message: str, *, path: object | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)
