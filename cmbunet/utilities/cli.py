"""Shared command-line plumbing: user errors print one clear line and exit non-zero, no traceback."""

from __future__ import annotations

import functools
import sys
from typing import Callable

from cmbunet.errors import CMBUNetError

#: What Ctrl-C prints for commands whose plain re-run skips finished work (prediction, preprocessing, conversion).
INTERRUPTED = "interrupted; finished outputs are kept and a re-run continues where this one stopped"

Main = Callable[[list[str] | None], int | None]


def run_cli(main: Main | None = None, *, interrupted: str = INTERRUPTED) -> Callable:
    """Decorator for CLI entry points: turn :class:`CMBUNetError` and ``OSError`` (e.g. an unwritable output folder)
    into ``error: ...`` on stderr and exit code 2; Ctrl-C prints ``interrupted`` and exits 130.

    Use as ``@run_cli``, or ``@run_cli(interrupted="...")`` for a command whose re-run needs more than the same
    command line (``cmbunet_train`` continues only with ``--c``)."""
    if main is None:
        return functools.partial(run_cli, interrupted=interrupted)

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            code = main(argv)
        except CMBUNetError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except OSError as e:  # unwritable output folder, a path through a regular file, disk full, ...
            where = f"{e.filename}: " if e.filename else ""
            print(f"error: {where}{e.strerror or e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(interrupted, file=sys.stderr)
            return 130
        return int(code or 0)

    return wrapper
