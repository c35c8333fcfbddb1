"""Reading, writing, hashing and overriding ``plans.json``.

The hash covers only what makes a trained network and its preprocessed data valid (spacing, normalisation,
resampling, channels, the three stages' sizes and networks). Thresholds, schedules and augmentation are left
out on purpose: tuning a threshold or training longer must not invalidate existing checkpoints.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

from cmbunet.errors import CMBUNetError, InputError
from cmbunet.plans.validation import validate_plans
from cmbunet.utilities.file_io import json_hash, save_json

PLANS_VERSION = 1
STAGES = ("screening", "discrimination", "segmentation")
REQUIRED_KEYS = ("plans_version", "channel_names", "num_input_channels", "target_spacing", "normalization",
                 "resampling", "screening", "discrimination", "segmentation", "augmentation", "training", "inference")

#: Keys that are consequences of others: overriding them directly is refused with a pointer to the source.
DERIVED_KEYS = {
    "plans_version": "it is fixed by cmbunet",
    "preset": "re-plan with --preset instead",
    "overrides": "it records the overrides themselves",
    "num_input_channels": "it follows channel_names in dataset.json",
    "cmb_box": "it records the fingerprint's CMB statistics; override screening.block_size instead",
    "rules": "it documents the planning rules",
    "screening.fcn_stride": "the screening FCN has one 2x pool, so its stride is 2",
    "screening.fcn_offset": "it is screening.block_size // 2",
    "screening.network.last_kernel": "it follows screening.block_size and first_kernels",
    "screening.network.in_channels": "it follows channel_names in dataset.json",
    "discrimination.network.in_channels": "it follows channel_names in dataset.json",
    "segmentation.network.in_channels": "it follows channel_names in dataset.json",
}

_HASHED_TOP = ("plans_version", "channel_names", "num_input_channels", "target_spacing", "normalization", "resampling")
_HASHED_STAGE = {
    "screening": ("block_size", "fcn_stride", "fcn_offset", "network"),
    "discrimination": ("block_size", "network"),
    "segmentation": ("patch_size", "network"),
}
_BARE_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


def load_plans(path: str | Path) -> dict:
    """Read and check a plans file; raise :class:`InputError` naming it when missing, invalid or outdated."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "plans file does not exist; run cmbunet_plan_and_preprocess first")
    try:
        plans = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(path, f"is not valid JSON ({e})") from None
    if not isinstance(plans, dict):
        raise InputError(path, "is not a plans file (expected a JSON object)")
    version = plans.get("plans_version")
    if version != PLANS_VERSION:
        raise InputError(path, f"has plans_version {version!r}; this cmbunet reads version {PLANS_VERSION}; "
                               "re-run cmbunet_plan_and_preprocess")
    missing = [k for k in REQUIRED_KEYS if k not in plans]
    if missing:
        raise InputError(path, f"is missing {', '.join(missing)}")
    from cmbunet.plans.planner import plans_problems

    validate_plans(plans, path)  # types and ranges first, so the consistency checks see well-formed values
    problems = plans_problems(plans)
    if problems:
        raise InputError(path, "is inconsistent: " + "; ".join(problems))
    return plans


def save_plans(plans: dict, path: str | Path) -> None:
    """Write the plans atomically (an interrupted write never leaves a truncated plans.json)."""
    save_json(plans, path)


def _canonical(obj: Any) -> Any:
    """Numbers as floats with 10 significant digits, so ``1`` == ``1.0`` and float noise does not change a hash."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, (int, float)):
        return float(f"{float(obj):.10g}")
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    return obj


def hashed_content(plans: dict, stage: str | None = None) -> dict:
    """The part of the plans that defines the preprocessed data and the networks (all stages, or one)."""
    stages = STAGES if stage is None else (stage,)
    if stage is not None and stage not in STAGES:
        raise CMBUNetError(f"unknown stage '{stage}'; expected one of {STAGES}")
    try:
        content = {k: plans[k] for k in _HASHED_TOP}
        for s in stages:
            content[s] = {k: plans[s][k] for k in _HASHED_STAGE[s]}
    except KeyError as e:
        raise CMBUNetError(f"plans lack {e}; cannot compute their hash") from None
    return _canonical(content)


def plans_hash(plans: dict, stage: str | None = None) -> str:
    """Stable 16-hex hash of :func:`hashed_content`; with ``stage``, only the shared part and that stage."""
    return json_hash(hashed_content(plans, stage))


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``dotted.key=JSON`` into key and value; a bare word that is not JSON is taken as a string."""
    if "=" not in item:
        raise CMBUNetError(f"override '{item}' is not of the form dotted.key=VALUE")
    key, text = item.split("=", 1)
    key, text = key.strip(), text.strip()
    if not key:
        raise CMBUNetError(f"override '{item}' has an empty key")
    try:
        return key, json.loads(text)
    except json.JSONDecodeError:
        if _BARE_WORD.match(text):
            return key, text
        raise CMBUNetError(f"override {key}: value '{text}' is neither JSON nor a bare word") from None


def _same_kind(old: Any, new: Any) -> bool:
    """Whether ``new`` may replace ``old``: numbers for numbers, lists for lists, and so on; null is open."""
    if old is None or new is None:
        return True
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(old, bool) and isinstance(new, bool)
    if isinstance(old, (int, float)):
        return isinstance(new, (int, float))
    return isinstance(new, type(old))


def _set_dotted(plans: dict, key: str, value: Any) -> None:
    """Set an existing dotted key (list items by integer index); raise naming the key if it does not exist."""
    parts = key.split(".")
    node: Any = plans
    for i, part in enumerate(parts):
        where = ".".join(parts[: i + 1])
        if isinstance(node, dict):
            if part not in node:
                close = ", ".join(sorted(str(k) for k in node)[:20])
                raise CMBUNetError(f"override {key}: '{where}' does not exist in the plans (available here: {close})")
            if i == len(parts) - 1:
                if not _same_kind(node[part], value):
                    raise CMBUNetError(f"override {key}: expected a value like {json.dumps(node[part])}, got {json.dumps(value)}")
                node[part] = value
                return
            node = node[part]
        elif isinstance(node, list):
            if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                raise CMBUNetError(f"override {key}: '{where}' is not an index of a list of length {len(node)}")
            if i == len(parts) - 1:
                if not _same_kind(node[int(part)], value):
                    raise CMBUNetError(f"override {key}: expected a value like {json.dumps(node[int(part)])}, got {json.dumps(value)}")
                node[int(part)] = value
                return
            node = node[int(part)]
        else:
            raise CMBUNetError(f"override {key}: '{'.'.join(parts[:i])}' is a value, not a group of settings")


def _check_overridable(key: str) -> None:
    for derived, why in DERIVED_KEYS.items():
        if key == derived or key.startswith(derived + "."):
            raise CMBUNetError(f"override {key}: cannot be set directly, {why}")
    if key.endswith("_rule") or key.endswith(".rule"):
        raise CMBUNetError(f"override {key}: rules describe how a value was derived and cannot be set")


def apply_overrides(plans: dict, overrides: list[str] | None) -> dict:
    """Return a copy of ``plans`` with ``dotted.key=JSON`` overrides applied and dependent values re-derived.

    Values that follow from an overridden one (e.g. the last screening kernel from the block size) are
    recomputed unless also overridden; the result is checked (types and ranges by
    :func:`cmbunet.plans.validation.validate_plans`, then consistency), and the overrides are recorded in
    ``plans["overrides"]``.
    """
    out = copy.deepcopy(plans)
    if not overrides:
        return out
    explicit: set[str] = set()
    for item in overrides:
        key, value = parse_override(item)
        _check_overridable(key)
        _set_dotted(out, key, value)
        explicit.add(re.sub(r"(\.-?\d+)+$", "", key))  # an item of a list counts as the list
    from cmbunet.plans.planner import rederive

    where = f"overrides {list(overrides)}"
    validate_plans(out, where)
    try:
        out = rederive(out, explicit)
    except CMBUNetError as e:
        raise CMBUNetError(f"{where} give unusable plans: {e}") from None
    validate_plans(out, where)
    out["overrides"] = list(plans.get("overrides", [])) + [str(o) for o in overrides]
    return out


def schedule_for(plans: dict, stage: str, device: str) -> dict:
    """The training schedule of ``stage`` for ``device``: ``cuda`` (any ``cuda:N``) -> gpu, anything else -> cpu."""
    if stage not in STAGES:
        raise CMBUNetError(f"unknown stage '{stage}'; expected one of {STAGES}")
    kind = "gpu" if str(device).startswith("cuda") else "cpu"
    try:
        return copy.deepcopy(plans["training"][kind][stage])
    except KeyError:
        raise CMBUNetError(f"the plans have no {kind} schedule for stage {stage}") from None
