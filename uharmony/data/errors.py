"""The data layer's error: a problem with one input file or table, the file named."""

from __future__ import annotations


class DataError(ValueError):
    """A problem with one input file or table; the message names the file."""

    def __init__(self, path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason
