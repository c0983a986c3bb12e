"""Errors a user can fix. The CLI prints them as one clear message (no traceback) and exits 2.

Anything that is the user's mistake (bad annotation file, missing weight file, a cache that does
not fit the run) raises a subclass of `UserError`; real bugs stay ordinary exceptions.
"""
from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """A problem the user can fix; `str(err)` is the whole message."""


class AnnotationError(UserError):
    """A malformed annotation file: names the file, the line (1-based, when known) and the problem."""

    def __init__(self, path: str | Path, line: int | None, problem: str):
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


class MissingVideosError(UserError):
    """Videos named by the annotations that are not on disk, reported together."""

    def __init__(self, missing: list[str], total: int, root: str | Path, show: int = 5):
        self.missing = list(missing)
        head = ", ".join(self.missing[:show])
        more = f" (and {len(self.missing) - show} more)" if len(self.missing) > show else ""
        super().__init__(
            f"{len(self.missing)} of {total} videos named in the annotations are missing under {root}: "
            f"{head}{more}"
        )


class CacheMismatchError(UserError):
    """A cache that does not match what a stage expects (missing arrays, other shapes, other key)."""


class WeightsMissingError(UserError):
    """A real preset asked for a checkpoint file that is not where it should be."""
