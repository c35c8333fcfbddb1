"""Atomic writers: every output goes to a temporary file beside its target and is renamed into place,
so an interrupted command never leaves a half-written file that a re-run would mistake for a finished one."""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import json
import math
import os
import re
import resource
import socket
import tempfile
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from cmbunet.errors import ChecksumError, InputError

_UMASK = os.umask(0)
os.umask(_UMASK)

#: Temporary files are named ``.part-HOST-PID-XXXXXXXX<suffix>``, so a later run can tell whether the
#: process that wrote one is gone (killed) and remove it: see :func:`remove_stale_temp_files`. The name does not
#: contain the target's name, so it stays short (at most about 60 bytes) whatever the target is called: a target
#: name of up to 255 bytes, the usual file system limit, can always be written. Older versions named them
#: ``.TARGET.part-HOST-PID-XXXXXXXX<suffix>``; those are recognised as well.
_HOST = (re.sub(r"[^A-Za-z0-9]", "", socket.gethostname().split(".")[0]) or "host")[:20]
#: This machine's name as temporary names record it (letters and digits of the short host name, at most 20).
HOST = _HOST
_TEMP_RE = re.compile(r"^\.(?:.+\.)?part-(?P<host>[A-Za-z0-9]*)-(?P<pid>\d+)-[a-z0-9_]{8}")
#: Longest file ending a temporary name keeps (``.nii.gz``, ``.npz``); longer ones are cut to what fits.
_MAX_TEMP_SUFFIX = 16
#: A temporary file untouched for this long belongs to no running writer, whatever machine wrote it.
STALE_TEMP_SECONDS = 3600.0
#: Errors of a write that ran out of room; the message then names the target, since the OS names no file.
_NO_ROOM = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO}
#: A disk with less room than this left after a failed write is full: the write failed for lack of space.
FULL_DISK_BYTES = 4 << 20


def _size_text(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 1024:.1f} kB" if size >= 1024 else f"{size} bytes"


def lack_of_room(folder: Path, written: int | None = None) -> str | None:
    """Why a write into ``folder`` that failed (or left an incomplete file of ``written`` bytes) ran out of room,
    or None when it did not: the file size limit of this process (``ulimit -f``) reached, or the disk full (less
    than :data:`FULL_DISK_BYTES` left; root may also use the blocks reserved for it)."""
    try:
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except (OSError, ValueError):
        limit = resource.RLIM_INFINITY
    if written is not None and limit != resource.RLIM_INFINITY and written >= limit:
        return f"writing stopped at the file size limit of this process ({_size_text(limit)}, ulimit -f)"
    try:
        stat = os.statvfs(folder)
    except OSError:
        return None
    free = (stat.f_bfree if os.geteuid() == 0 else stat.f_bavail) * stat.f_frsize
    if free < FULL_DISK_BYTES:
        return f"writing failed for lack of space: the disk holding {folder} is full ({_size_text(free)} free)"
    return None


def written_file_problem(path: str | Path) -> str | None:
    """Why a just-written file is incomplete, or None. Checks what every format allows cheaply: the file
    exists, a gzip stream is complete (decompressed to the end), an ``.npz`` has its zip directory."""
    path = Path(path)
    if not path.is_file():
        return "does not exist"
    name = path.name
    if name.endswith(".gz"):
        try:
            with gzip.open(path, "rb") as f:
                while f.read(1 << 22):
                    pass
        except (EOFError, OSError, zlib.error) as e:
            return f"is an incomplete gzip stream ({e})"
    elif name.endswith(".npz"):
        try:
            with zipfile.ZipFile(path) as z:
                z.infolist()
        except (OSError, zipfile.BadZipFile) as e:
            return f"is an incomplete zip file ({e})"
    return None


def temp_suffix(target: Path, suffix: str | None = None) -> str:
    """The file ending of ``target``'s temporary file: ``suffix`` or the target's endings (``.nii.gz``), cut to
    the last endings that fit in :data:`_MAX_TEMP_SUFFIX` bytes, so that a name with many dots (``sub-1.run-2.
    nii.gz``) cannot make the temporary name longer than the file system allows."""
    parts = Path("x" + suffix).suffixes if suffix is not None else target.suffixes
    kept = ""
    for part in reversed(parts):
        if len((part + kept).encode()) > _MAX_TEMP_SUFFIX:
            break
        kept = part + kept
    return kept or ".tmp"


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str | None = None,
                verify: Callable[[Path], str | None] | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; once written, verify it and rename it onto ``target``;
    on error delete it.

    ``suffix`` keeps the file ending that some writers (SimpleITK, numpy) look at, e.g. ``.nii.gz``. Some
    writers (SimpleITK's NIfTI writer) do not fail on a full disk or a file size limit but leave a truncated
    file, so the temporary file is checked before it may replace anything: by ``verify`` (returns a problem or
    None) when given, else by :func:`written_file_problem`. A failed write raises :class:`InputError` naming
    ``target``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".part-{_HOST}-{os.getpid()}-", suffix=temp_suffix(target, suffix),
                               dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
        except (OSError, RuntimeError, InputError) as e:  # a writer's error on a full disk (C++ writers: RuntimeError)
            room = _room_left(tmp_path)
            if room:
                raise InputError(target, f"was not written completely: {room}; nothing was replaced") from None
            if isinstance(e, OSError) and e.errno in _NO_ROOM:
                raise InputError(target, f"could not be written: {e.strerror or e} (is the disk full or a file "
                                         "size limit reached?); nothing was replaced") from None
            raise
        problem = (verify or written_file_problem)(tmp_path)
        if problem:
            room = _room_left(tmp_path)
            if room:  # some writers (SimpleITK's NIfTI writer) leave a truncated file without an error
                raise InputError(target, f"was not written completely: {room}; nothing was replaced")
            raise InputError(target, f"was not written completely (the file {problem}; is the disk full or a file size "
                                     "limit reached?); nothing was replaced")
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp creates 0600; outputs get the usual permissions
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _room_left(tmp: Path) -> str | None:
    """:func:`lack_of_room` for the temporary file ``tmp`` of a failed write (its size as written so far)."""
    try:
        written = tmp.stat().st_size
    except OSError:
        written = None
    return lack_of_room(tmp.parent, written)


def outputs_complete(paths: Iterable[str | Path | None]) -> bool:
    """The "finished" rule of every per-case output set: each requested file (``None``: not requested) exists.
    Writers write each file atomically and the one that marks the case last, so existing files are complete."""
    return all(Path(p).is_file() for p in paths if p is not None)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def process_gone(pid: int) -> bool:
    """Whether no process of this pid runs on this machine (never true for this process itself)."""
    return pid != os.getpid() and not _pid_alive(pid)


def remove_stale_temp_files(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Delete temporary files that a killed run left in ``folder`` (see :func:`atomic_path`); return them.

    A temporary file is stale when its writer (same machine) no longer runs, or when it has not been touched
    for :data:`STALE_TEMP_SECONDS`. Files of a writer that still runs (e.g. another ``-part_id`` of the same
    prediction) are left alone.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.rglob(".*") if recursive else folder.glob(".*")):
        m = _TEMP_RE.match(path.name)
        if not m or not path.is_file():
            continue
        with contextlib.suppress(OSError):
            pid = int(m.group("pid"))
            dead = m.group("host") == _HOST and pid != os.getpid() and not _pid_alive(pid)
            if dead or time.time() - path.stat().st_mtime > STALE_TEMP_SECONDS:
                path.unlink()
                removed.append(path)
    return removed


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def save_json(obj: Any, path: str | Path, indent: int = 2) -> None:
    """Write JSON atomically; numpy scalars/arrays are converted and NaN/inf become ``null``."""
    text = json.dumps(_nan_to_none(json.loads(json.dumps(obj, default=_json_default))), indent=indent, sort_keys=False)
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(text + "\n")


def load_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)


def load_json_input(path: Path, missing: str) -> Any:
    """The JSON of a file the user gave or a command wrote earlier; a missing (``missing`` says what to do) or
    unparsable file is an :class:`InputError` naming it, never a traceback."""
    if not path.is_file():
        raise InputError(path, missing)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(path, f"is not valid JSON ({e})") from None


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """Compressed ``.npz`` written atomically."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def save_text(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def json_hash(obj: Any) -> str:
    """Stable short hash of a JSON-able object (key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, default=_json_default).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


#: The checksum of a file ``F`` lies in ``F.sha256``, in the format of ``sha256sum`` (``sha256sum -c`` checks it).
CHECKSUM_ENDING = ".sha256"


def checksum_file(path: str | Path) -> Path:
    """``path.sha256``: where the checksum of ``path`` is kept."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_ENDING)


@contextlib.contextmanager
def checksummed_path(target: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """:func:`atomic_path` that also writes ``target.sha256``, so that damage to the file after it was written
    (bit rot, an incomplete copy) is found when it is read (:func:`verify_checksum`), not used silently.

    The old checksum is removed before the file is replaced and the new one written after: an interruption in
    between leaves a file without a checksum (read unchecked, as files of older versions), never a good file
    with a wrong checksum."""
    target = Path(target)
    checksum_file(target).unlink(missing_ok=True)
    with atomic_path(target, suffix=suffix) as tmp:
        yield tmp
        digest = file_sha256(tmp)
    write_checksum(target, digest)


def write_checksum(path: str | Path, digest: str) -> None:
    """Record ``digest`` (sha256 hex) as the checksum of ``path``, atomically."""
    path = Path(path)
    save_text(f"{digest}  {path.name}\n", checksum_file(path))


def verify_checksum(path: str | Path) -> bool:
    """Check ``path`` against its ``.sha256`` file; False when it has none (written by an older version). Raises
    :class:`ChecksumError` naming the file when its bytes differ from those the checksum was written for."""
    path = Path(path)
    sidecar = checksum_file(path)
    try:
        text = sidecar.read_text()
    except FileNotFoundError:
        return False
    except (OSError, UnicodeDecodeError) as e:
        raise ChecksumError(f"{sidecar}: the checksum of {path.name} cannot be read ({e})") from None
    expected = text.split(maxsplit=1)[0].lower() if text.strip() else ""
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise ChecksumError(f"{sidecar}: is not a sha256 checksum (expected 64 hex digits and the file name)")
    found = file_sha256(path)
    if found != expected:
        raise ChecksumError(f"{path}: is damaged: its sha256 is {found}, not {expected} as recorded in {sidecar.name} "
                            "when it was written (bit rot, an incomplete copy or an edit); restore the file from a "
                            "copy or train this stage again")
    return True
