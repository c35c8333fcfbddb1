"""Process pools that stop cleanly on Ctrl-C.

Ctrl-C sends SIGINT to every process of the terminal's foreground process group, pool workers included. A worker
that gets it raises ``KeyboardInterrupt`` wherever it is (inside a task, waiting for the next one, or still
starting up) and prints a traceback; with several workers that is a screen of tracebacks around the one line
the command prints. :func:`worker_pool` starts its workers with SIGINT ignored, so only the command's own
process sees Ctrl-C: it terminates the workers, and :func:`cmbunet.utilities.cli.run_cli` prints its short
``interrupted`` line and exits with code 130. Finished outputs are kept, since every file is written atomically.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.pool
import signal
import threading
from typing import Iterator


def ignore_sigint() -> None:
    """Pool initializer: this worker ignores Ctrl-C; the parent process decides what happens."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def worker_pool(processes: int, context: str | None = None) -> Iterator[multiprocessing.pool.Pool]:
    """A ``multiprocessing`` pool of ``processes`` workers (start method ``context``, default the platform's)
    whose workers ignore SIGINT from their first instruction on.

    The workers are started while this process ignores SIGINT, because a spawned interpreter keeps an ignored
    SIGINT ignored (and installs no ``KeyboardInterrupt`` handler), so a Ctrl-C while a worker is still starting
    up cannot reach it either; the ``initializer`` covers workers started later. On leaving normally the pool is
    closed and joined; on any exception, Ctrl-C included, its workers are terminated and the exception goes on.
    """
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    try:
        pool = multiprocessing.get_context(context).Pool(processes, initializer=ignore_sigint)
    finally:
        if main_thread:  # a handler installed outside Python reads as None: Python's own is put in its place
            signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)
    try:
        yield pool
    except BaseException:
        pool.terminate()
        raise
    pool.close()
    pool.join()
