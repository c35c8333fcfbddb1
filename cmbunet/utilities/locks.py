"""Exclusive locks for work that two runs must never do at once: training one fold, preprocessing one dataset.

A lock is a small JSON file created atomically (``O_CREAT | O_EXCL``: of two runs, exactly one creates it)
that names its holder: pid, host, start time and command. A second run is refused with
:class:`~cmbunet.errors.LockedError` naming that holder and the lock file. A lock whose holder is gone (same
host, pid no longer running: a killed run) is stale; the next run removes it with a message and takes the lock.
A lock of another host cannot be checked from here and is never taken over; the message says how to remove it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from cmbunet.errors import LockedError

#: A lock file that is still empty or half-written this long after its creation belongs to a run killed while
#: creating it (writing the few bytes takes microseconds).
_UNREADABLE_GRACE_SECONDS = 10.0
#: Attempts to create the lock after removing a stale one (another run may be removing it at the same time).
_ATTEMPTS = 5


def _pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host (one of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_holder(path: Path) -> dict[str, Any] | None:
    """The holder recorded in a lock file; ``{}`` when it is empty or unreadable; None when it does not exist."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _stale_reason(path: Path, holder: dict[str, Any]) -> str | None:
    """Why the lock's holder is certainly gone, or None when it may still run."""
    if not holder:
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return "it was removed"
        return f"it is empty or unreadable since {age:.0f} s" if age > _UNREADABLE_GRACE_SECONDS else None
    pid, host = holder.get("pid"), holder.get("host")
    if host == socket.gethostname() and isinstance(pid, int) and pid != os.getpid() and not _pid_alive(pid):
        return f"its holder, pid {pid} on {host}, no longer runs"
    return None


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "a run that is just starting"
    since = f", since {holder['started']}" if holder.get("started") else ""
    command = f" ({holder['command']})" if holder.get("command") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')}{since}{command}"


def _try_create(path: Path, record: dict[str, Any]) -> bool:
    """Create the lock file with ``record`` if no lock file exists; False if one does."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(record) + "\n")
    except BaseException:  # e.g. a full disk: an empty lock would block the next run for a while
        path.unlink(missing_ok=True)
        raise
    return True


def _remove_stale(path: Path, seen: dict[str, Any]) -> None:
    """Remove the lock file if it still holds what was judged stale: it is first renamed to a unique name (atomic),
    then checked; a lock that another run created meanwhile is put back instead of being removed."""
    moved = path.with_name(f"{path.name}.stale-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.rename(path, moved)
    except FileNotFoundError:
        return
    if _read_holder(moved) == seen:
        moved.unlink(missing_ok=True)
    elif not _try_create_link(moved, path):
        moved.unlink(missing_ok=True)  # a newer lock exists again: the one moved aside lost the race


def _try_create_link(source: Path, path: Path) -> bool:
    """Put a lock file moved aside by mistake back, unless a lock exists again."""
    try:
        os.link(source, path)
    except FileExistsError:
        return False
    except OSError:  # no hard links on this file system: rename back (may replace a lock created meanwhile)
        os.rename(source, path)
        return True
    source.unlink(missing_ok=True)
    return True


@contextlib.contextmanager
def exclusive_lock(path: str | Path, what: str) -> Iterator[Path]:
    """Hold the lock file ``path`` for ``what`` (e.g. ``training of Dataset001_X fold 0``) while the block runs.

    Raises :class:`LockedError` naming the holder and the file when another run holds it; removes a stale lock
    (printing why) and takes it. The lock is released when the block ends, also on an exception or Ctrl-C."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:500], "token": secrets.token_hex(8)}
    for _ in range(_ATTEMPTS):
        if _try_create(path, record):
            break
        holder = _read_holder(path)
        if holder is None:
            continue  # released meanwhile
        reason = _stale_reason(path, holder)
        if reason is None:
            raise LockedError(f"{what} is already running: {_describe(holder)} holds the lock {path}. Wait for it "
                              f"to finish; if that run no longer runs (e.g. it ran on another machine and was "
                              f"killed), delete {path} and run this command again")
        print(f"removing the stale lock {path} ({reason})", file=sys.stderr)
        _remove_stale(path, holder)
        time.sleep(0.01 + secrets.randbelow(50) / 1000)
    else:
        raise LockedError(f"{path}: could not take the lock for {what} after {_ATTEMPTS} attempts (other runs "
                          "keep taking it); run this command again")
    try:
        yield path
    finally:
        if _read_holder(path) == record:
            path.unlink(missing_ok=True)
