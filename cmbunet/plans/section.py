"""How a section of the plans is declared, checked, built from its JSON and written back to it.

Each field of a section dataclass names the check its value must pass (:func:`leaf`), the section nested under
it (:func:`subsection`, which may allow ``null``), or marks a key the planner does not write (:func:`unplanned`). From these alone,
:func:`value_problems` finds every missing, unknown or unusable value (naming its dotted key), :func:`build`
makes the frozen objects (lists become tuples) and :func:`as_json` gives back the JSON.
"""

from __future__ import annotations

import json
from dataclasses import field, fields, is_dataclass
from pathlib import Path
from typing import Any, Mapping

from cmbunet.plans.validation import Check, normalized, optional, raise_problems

_MISSING = object()


def leaf(check: Check | None) -> Any:
    """A value; ``check`` says what is wrong with it (None: checked by its section as a whole)."""
    return field(metadata={"check": check})


def subsection(cls: type, nullable: bool = False) -> Any:
    """A nested object, checked by its own fields; ``nullable``: ``null`` is allowed too (and read as None)."""
    return field(metadata={"section": cls, "check": None, "nullable": nullable})


def unplanned(check: Check) -> Any:
    """A key the planner does not write: absent means None, and None is left out of ``to_dict``."""
    return field(default=None, metadata={"check": optional(check), "unplanned": True})


def checked_fields(cls: Any) -> list:
    """The fields that are keys of the JSON (not bookkeeping such as ``Plans.filled``)."""
    return [f for f in fields(cls) if not f.metadata.get("internal")]


def value_problems(cls: type, data: Any, prefix: str) -> list[str]:
    """``key = value: problem`` for every missing, unknown or unusable value of ``data`` against section ``cls``."""
    if not isinstance(data, Mapping):
        return [f"{prefix or 'plans'} = {json.dumps(data)}: must be an object"]
    problems, names = [], {f.name for f in checked_fields(cls)}
    for f in checked_fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = data.get(f.name, _MISSING)
        if value is _MISSING:
            if not f.metadata.get("unplanned"):
                problems.append(f"{key} is missing")
        elif f.metadata.get("check") is not None:
            problem = f.metadata["check"](value)
            if problem:
                problems.append(f"{key} = {json.dumps(value)}: {problem}")
        elif f.metadata.get("section") is not None and not (value is None and f.metadata["nullable"]):
            problems += value_problems(f.metadata["section"], value, key)
    expected = ", ".join(sorted(names))
    problems += [f"{prefix + '.' if prefix else ''}{k} is not a plans key (expected one of {expected})"
                 for k in data if k not in names]
    return problems


def _freeze(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, dict):
        return {k: _freeze(x) for k, x in v.items()}
    return v


def _thaw(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_thaw(x) for x in v]
    if isinstance(v, dict):
        return {k: _thaw(x) for k, x in v.items()}
    return v


def build(cls: type, data: Mapping[str, Any]) -> Any:
    """The frozen ``cls`` of checked JSON ``data`` (absent unplanned keys are None; a whole number written as a
    float, ``1e3``, becomes the ``int`` its check asks for)."""
    kwargs = {}
    for f in checked_fields(cls):
        if f.name in data:
            value, section = data[f.name], f.metadata.get("section")
            kwargs[f.name] = (build(section, value) if section is not None and value is not None
                              else _freeze(normalized(f.metadata.get("check"), value)))
    return cls(**kwargs)


def as_json(obj: Any, prefix: str, skip: frozenset[str]) -> dict[str, Any]:
    """The JSON of section ``obj`` (at dotted ``prefix``) without the dotted keys in ``skip``."""
    out = {}
    for f in checked_fields(obj):
        key, value = prefix + f.name, getattr(obj, f.name)
        if key in skip or (f.metadata.get("unplanned") and value is None):
            continue
        out[f.name] = as_json(value, key + ".", skip) if is_dataclass(value) else _thaw(value)
    return out


class Section:
    """``from_dict`` (checked, naming each key under ``PREFIX``) and ``to_dict`` (the JSON it came from)."""

    PREFIX = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str | Path | None = None):  # noqa: ANN206
        raise_problems(value_problems(cls, data, cls.PREFIX), where, "plans value(s)")
        return build(cls, data)

    def to_dict(self) -> dict[str, Any]:
        return as_json(self, "", frozenset())
