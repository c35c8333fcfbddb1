"""Shared command-line plumbing: user errors print one clear line and exit non-zero, no traceback."""

from __future__ import annotations

import functools
import sys
from typing import Callable

from cmbunet.errors import CMBUNetError


def run_cli(main: Callable[[list[str] | None], int | None]) -> Callable[[list[str] | None], int]:
    """Decorator for CLI entry points: turn :class:`CMBUNetError` and ``OSError`` (e.g. an unwritable output folder)
    into ``error: ...`` on stderr and exit code 2."""

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
            print("interrupted; finished outputs are kept and a re-run continues where this one stopped", file=sys.stderr)
            return 130
        return int(code or 0)

    return wrapper
