"""Type and range checks of every plans and inference-settings value, in one place.

A value of the right JSON kind can still be unusable: ``max_candidates=1e3`` is a float, a batch size of 0
divides by zero, 0 epochs trains nothing, a threshold of "0.5" is a string. Checked when plans or settings are
loaded (and after overrides), such a value is reported with its key and its file, before any work starts,
instead of failing later inside training or prediction with a traceback.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping

from cmbunet.errors import CMBUNetError, InputError

#: A check returns what is wrong with a value, or None when it is fine.
Check = Callable[[Any], "str | None"]
STAGES = ("screening", "discrimination", "segmentation")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def integer(lo: int | None = None, hi: int | None = None) -> Check:
    bounds = " ".join(b for b in (f">= {lo}" if lo is not None else "", f"<= {hi}" if hi is not None else "") if b)
    want = f"an integer {bounds}".strip()

    def check(v: Any) -> str | None:
        if not _is_int(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
            return f"must be {want}"
        return None
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


def choice(*options: str) -> Check:
    def check(v: Any) -> str | None:
        return None if v in options else f"must be one of {', '.join(options)}"
    return check


def optional(inner: Check) -> Check:
    def check(v: Any) -> str | None:
        return None if v is None else inner(v)
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
    return check


def triple(item: Check) -> Check:
    return listing(item, length=3)


def proportions(v: Any) -> str | None:
    """Sample proportions: positive/negative/false_positive weights, not all zero."""
    allowed = {"positive", "negative", "false_positive"}
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


def intensity(v: Any) -> str | None:
    """``augmentation.intensity``: every transform's range (a pair of numbers >= 0; per axis for the zoom) and its
    probability in [0, 1]."""
    keys = {"low_resolution_zoom", "blur_sigma", "noise_variance", "brightness", "contrast", "gamma"}
    expected = keys | {k.removesuffix("_zoom").removesuffix("_sigma").removesuffix("_variance") + "_probability"
                       for k in keys}
    if not isinstance(v, dict) or set(v) != expected:
        return f"must be null or an object with exactly the keys {', '.join(sorted(expected))}"
    pair = listing(number(0), length=2)
    for k in sorted(keys):
        value = v[k]
        problem = triple(pair)(value) if k == "low_resolution_zoom" else pair(value)
        if problem:
            return f"{k} {problem}"
    for k in sorted(expected - keys):
        problem = number(0, 1)(v[k])
        if problem:
            return f"{k} {problem}"
    return None


#: Settings that inference_settings.json and the command line may change, and the plans' inference section.
SETTINGS_RULES: dict[str, Check] = {
    "screening_threshold": number(0, 1),
    "nms_size_vox": triple(integer(1)),
    "max_candidates": integer(1),
    "discrimination_threshold": number(0, 1),
    "discrimination_shift_vox": integer(0),
    "discrimination_aggregate": choice("max", "mean"),
    "discrimination_mirror": boolean,
    "segmentation_threshold": number(0, 1, lo_open=True),
    "tile_size": triple(integer(1)),
    "min_component_voxels": optional(integer(0)),
}

SCHEDULE_RULES: dict[str, Check] = {
    "epochs": integer(1),
    "samples_per_epoch": integer(1),
    "batch_size": integer(1),
    "optimizer": choice("sgd", "adam"),
    "lr": number(0, lo_open=True),
    "momentum": number(0, 1),
    "nesterov": boolean,
    "weight_decay": number(0),
    "loss": choice("weighted_ce", "ce", "dice", "dice_ce"),
    "class_weights": optional(listing(number(0), length=2)),
    "lr_schedule": choice("poly"),
    "poly_exponent": number(0),
    "proportions": proportions,
    "mining_epochs": listing(integer(0)),
    "mining_threshold": number(0, 1),
    "mining_cases": optional(integer(1)),
    "mining_keep": choice("all", "hard"),
    "fp_sampling": choice("uniform", "hard"),
    "val_samples": integer(1),
}
SCHEDULE_REQUIRED = ("epochs", "samples_per_epoch", "batch_size", "lr", "proportions")

_SIZE = triple(integer(1))
_NETWORK = {"in_channels": integer(1), "features": listing(integer(1), min_length=1), "num_classes": integer(2, 2),
            "negative_slope": number(0)}
PLANS_RULES: dict[str, Check] = {
    "plans_version": integer(1),
    "channel_names": channel_names,
    "num_input_channels": integer(1),
    "target_spacing": triple(number(0, lo_open=True)),
    "normalization.scheme": choice("zscore_foreground_per_case"),
    "normalization.background_value": number(),
    "resampling.image_order": integer(0, 5),
    "resampling.image_order_z": integer(0, 5),
    "resampling.separate_z": boolean,
    "resampling.anisotropy_threshold": number(1),
    "screening.block_size": _SIZE,
    "screening.fcn_stride": _SIZE,
    "screening.fcn_offset": triple(integer(0)),
    **{f"screening.network.{k}": c for k, c in _NETWORK.items()},
    "screening.network.first_kernels": _SIZE,
    "screening.network.last_kernel": _SIZE,
    "discrimination.block_size": _SIZE,
    **{f"discrimination.network.{k}": c for k, c in _NETWORK.items()},
    "discrimination.network.first_kernels": _SIZE,
    "discrimination.network.fc_features": integer(1),
    "discrimination.network.dropout": number(0, 1, hi_open=True),
    "segmentation.patch_size": _SIZE,
    **{f"segmentation.network.{k}": c for k, c in _NETWORK.items()},
    "segmentation.network.foreground_prior": optional(number(0, 1, lo_open=True, hi_open=True)),
    "augmentation.max_translation_vox": integer(0),
    "augmentation.max_rotation_deg": number(0, 180),
    "augmentation.flip_axes": listing(integer(0, 2)),
    "augmentation.flip_probability": number(0, 1),
    "augmentation.rotation_probability": number(0, 1),
    "augmentation.intensity": optional(intensity),
    **{f"training.{device}.{stage}.{k}": c for device in ("gpu", "cpu") for stage in STAGES
       for k, c in SCHEDULE_RULES.items()},
    **{f"inference.{k}": c for k, c in SETTINGS_RULES.items() if k != "min_component_voxels"},
}
#: Keys that must be present (the rest have defaults where they are used).
PLANS_REQUIRED = (
    ["channel_names", "num_input_channels", "target_spacing", "screening.block_size", "discrimination.block_size",
     "segmentation.patch_size"]
    + [f"{s}.network.{k}" for s in STAGES for k in ("in_channels", "features")]
    + [f"training.{d}.{s}.{k}" for d in ("gpu", "cpu") for s in STAGES for k in SCHEDULE_REQUIRED]
    + ["inference.tile_size", "inference.nms_size_vox"]
)

_MISSING = object()


def _get(tree: Any, dotted: str) -> Any:
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _problems(values: Mapping[str, Any], rules: Mapping[str, Check], required: tuple | list = ()) -> list[str]:
    problems = []
    for key, check in rules.items():
        value = _get(values, key)
        if value is _MISSING:
            if key in required:
                problems.append(f"{key} is missing")
            continue
        problem = check(value)
        if problem:
            problems.append(f"{key} = {json.dumps(value)}: {problem}")
    return problems


def plans_value_problems(plans: Mapping[str, Any]) -> list[str]:
    """``key = value: problem`` for every plans value of the wrong type or out of range."""
    return _problems(plans, PLANS_RULES, PLANS_REQUIRED)


def settings_value_problems(settings: Mapping[str, Any]) -> list[str]:
    """``key = value: problem`` for every inference setting of the wrong type or out of range."""
    return _problems(settings, SETTINGS_RULES)


def _raise(problems: list[str], where: str | Path | None, what: str) -> None:
    if not problems:
        return
    text = f"invalid {what}: " + "; ".join(problems)
    if isinstance(where, Path):
        raise InputError(where, text)
    raise CMBUNetError(f"{where}: {text}" if where else text)


def validate_plans(plans: Mapping[str, Any], where: str | Path | None = None) -> None:
    """Raise naming ``where`` (the plans file, or a description such as the overrides) and every bad key."""
    _raise(plans_value_problems(plans), where, "plans value(s)")


def validate_settings(settings: Mapping[str, Any], where: str | Path | None = None) -> None:
    """Raise naming ``where`` (inference_settings.json, or the command line) and every bad setting."""
    _raise(settings_value_problems(settings), where, "inference setting(s)")
