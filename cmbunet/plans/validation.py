"""The checks a plans or inference-settings value must pass, and how their failures are reported.

A value of the right JSON kind can still be unusable: ``max_candidates=2.5`` is no count, a batch size of 0
divides by zero, 0 epochs trains nothing, a threshold of "0.5" is a string. Each field of the schema
(:mod:`cmbunet.plans.schema`) names one of these checks; values are checked when plans or settings are loaded
(and after overrides), and a bad value is reported with its key and its file, before any work starts, instead of
failing later inside training or prediction with a traceback.

A JSON number that is a whole number is an integer wherever one is expected: ``1e3`` and ``1000.0`` are read as
``1000`` (JSON has one kind of number; editors and other programs write either form). A check may carry a
``normalize`` function that gives a checked value its type; :func:`normalized` applies it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from cmbunet.errors import InputError, InvalidValueError

#: A check returns what is wrong with a value, or None when it is fine.
Check = Callable[[Any], "str | None"]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_whole(v: Any) -> bool:
    """A float that is a whole number (``1e3``): an integer as JSON writes it."""
    return isinstance(v, float) and math.isfinite(v) and v.is_integer()


def _whole_to_int(v: Any) -> Any:
    return int(v) if _is_whole(v) else v


def normalized(check: Check | None, v: Any) -> Any:
    """``v`` with the type its check gives it (``1e3`` -> ``1000`` where an integer is checked)."""
    normalize = getattr(check, "normalize", None)
    return normalize(v) if normalize is not None else v


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def integer(lo: int | None = None, hi: int | None = None) -> Check:
    bounds = " ".join(b for b in (f">= {lo}" if lo is not None else "", f"<= {hi}" if hi is not None else "") if b)
    want = f"an integer {bounds}".strip()

    def check(v: Any) -> str | None:
        if not (_is_int(v) or _is_whole(v)) or (lo is not None and v < lo) or (hi is not None and v > hi):
            return f"must be {want}"
        return None
    check.normalize = _whole_to_int  # type: ignore[attr-defined]
    return check


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Check:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi:g}")
    want = f"a number {' and '.join(parts)}".strip()

    def check(v: Any) -> str | None:
        if not _is_number(v):
            return f"must be {want}"
        if lo is not None and (v < lo or (lo_open and v == lo)):
            return f"must be {want}"
        if hi is not None and (v > hi or (hi_open and v == hi)):
            return f"must be {want}"
        return None
    return check


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def text(v: Any) -> str | None:
    return None if isinstance(v, str) and v else "must be a non-empty string"


def string(v: Any) -> str | None:
    return None if isinstance(v, str) else "must be a string"


def text_table(v: Any) -> str | None:
    """An object of strings (the ``rules`` table)."""
    if not isinstance(v, dict) or any(not isinstance(k, str) or not isinstance(x, str) for k, x in v.items()):
        return "must be an object of strings"
    return None


def choice(*options: str) -> Check:
    def check(v: Any) -> str | None:
        return None if v in options else f"must be one of {', '.join(options)}"
    return check


def optional(inner: Check) -> Check:
    def check(v: Any) -> str | None:
        return None if v is None else inner(v)
    check.normalize = lambda v: None if v is None else normalized(inner, v)  # type: ignore[attr-defined]
    return check


def listing(item: Check, length: int | None = None, min_length: int = 0) -> Check:
    """A list of ``length`` items (or at least ``min_length``), each passing ``item``."""
    def check(v: Any) -> str | None:
        if not isinstance(v, list) or (length is not None and len(v) != length) or len(v) < min_length:
            size = f"{length}" if length is not None else f"at least {min_length}"
            each = (item(None) or "").removeprefix("must be ")
            return f"must be a list of {size} values" + (f", each {each}" if each else "")
        for x in v:
            problem = item(x)
            if problem:
                return f"every entry {problem}"
        return None
    check.normalize = (  # type: ignore[attr-defined]
        lambda v: [normalized(item, x) for x in v] if isinstance(v, list) else v)
    return check


def triple(item: Check) -> Check:
    return listing(item, length=3)


#: The kinds of training sample: the keys of a schedule's ``proportions``, in the order of their codes in the
#: sample rows (:mod:`cmbunet.training.samples`).
SAMPLE_KINDS = ("positive", "negative", "false_positive")


def proportions(v: Any) -> str | None:
    """Sample proportions: positive/negative/false_positive weights, not all zero."""
    allowed = set(SAMPLE_KINDS)
    if not isinstance(v, dict) or not v or set(v) - allowed:
        return f"must be an object with keys among {', '.join(sorted(allowed))}"
    if any(not _is_number(x) or x < 0 for x in v.values()) or sum(v.values()) <= 0:
        return "must hold numbers >= 0 that are not all 0"
    return None


def channel_names(v: Any) -> str | None:
    if not isinstance(v, dict) or not v:
        return 'must be an object like {"0": "T2S"}'
    if sorted(v, key=lambda k: int(k) if str(k).isdigit() else -1) != [str(i) for i in range(len(v))]:
        return "keys must be the channel indices 0, 1, ..."
    if any(not isinstance(n, str) or not n for n in v.values()):
        return "names must be non-empty strings"
    return None


def raise_problems(problems: list[str], where: str | Path | None, what: str) -> None:
    """Raise naming ``where`` (a file: :class:`InputError`; a description such as the overrides, or nothing:
    :class:`InvalidValueError`) and every problem; do nothing when there is none."""
    if not problems:
        return
    message = f"invalid {what}: " + "; ".join(problems)
    if isinstance(where, Path):
        raise InputError(where, message)
    raise InvalidValueError(f"{where}: {message}" if where else message)
