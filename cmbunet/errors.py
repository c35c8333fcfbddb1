"""Exceptions that carry the offending file and the problem, so every command can print a clear message."""

from __future__ import annotations

from pathlib import Path


class CMBUNetError(Exception):
    """Base class of every error cmbunet reports to the user (printed without a traceback by the CLIs)."""


class InputError(CMBUNetError):
    """A user-provided file or folder is unusable. ``path`` names it, ``problem`` says why."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)

    def __reduce__(self):  # survive pickling, e.g. when raised in a multiprocessing worker
        return (self.__class__, (self.path, self.problem))


class InvalidValueError(CMBUNetError, ValueError):
    """A plans or inference-settings value, or data handed to a public function (arrays of a case, a linking
    distance), is missing, unknown, of the wrong type, out of range or inconsistent (raised as :class:`InputError`
    instead when the value comes from a file that can be named). Also a ``ValueError``, so callers of the Python
    API that catch that keep working."""


class DatasetIntegrityError(CMBUNetError):
    """A raw dataset failed verification. ``problems`` lists every (file, problem) found, not only the first."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        lines = "\n".join(f"  - {f}: {p}" for f, p in problems)
        super().__init__(f"dataset integrity check failed with {len(problems)} problem(s):\n{lines}")

    def __reduce__(self):
        return (self.__class__, (self.problems,))


class MissingStageError(CMBUNetError):
    """A training or prediction step needs a stage that has not been trained."""


class PlansMismatchError(CMBUNetError):
    """A checkpoint or preprocessed data belongs to other plans than the ones in use."""


class LockedError(CMBUNetError):
    """Another run holds the lock of the same work (one training fold, one dataset's preprocessing)."""


class ChecksumError(CMBUNetError):
    """A file no longer matches the checksum written with it (bit rot, a partial copy, an edit)."""


class PredictionRecordError(CMBUNetError):
    """An output folder holds predictions made with another model or other settings than the run asked for."""
