"""Reading, writing and hashing ``plans.json``.

The hash covers only what makes a trained network and its preprocessed data valid (spacing, normalisation,
resampling, channels, the three stages' sizes and networks). Thresholds, schedules and augmentation are left
out on purpose: tuning a threshold or training longer must not invalidate existing checkpoints. It is computed
from the JSON (:meth:`Plans.to_dict`), so the same file always gives the same hash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cmbunet.errors import CMBUNetError
from cmbunet.plans.schema import STAGES, Plans
from cmbunet.utilities.file_io import json_hash, load_json_input, save_json

_HASHED_TOP = ("plans_version", "channel_names", "num_input_channels", "target_spacing", "normalization", "resampling")
_HASHED_STAGE = {
    "screening": ("block_size", "fcn_stride", "fcn_offset", "network"),
    "discrimination": ("block_size", "network"),
    "segmentation": ("patch_size", "network"),
}


def load_plans(path: str | Path) -> Plans:
    """Read and check a plans file; raise :class:`InputError` naming it when missing, invalid or outdated."""
    path = Path(path)
    data = load_json_input(path, "plans file does not exist; run cmbunet_plan_and_preprocess first")
    return Plans.from_dict(data, path)


def save_plans(plans: Plans, path: str | Path) -> None:
    """Write the plans atomically (an interrupted write never leaves a truncated plans.json)."""
    save_json(plans.to_dict(), path)


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


def hashed_content(plans: Plans, stage: str | None = None) -> dict:
    """The part of the plans that defines the preprocessed data and the networks (all stages, or one)."""
    if stage is not None and stage not in STAGES:
        raise CMBUNetError(f"unknown stage '{stage}'; expected one of {STAGES}")
    data = plans.to_dict()
    content = {k: data[k] for k in _HASHED_TOP}
    for s in STAGES if stage is None else (stage,):
        content[s] = {k: data[s][k] for k in _HASHED_STAGE[s]}
    return _canonical(content)


def preprocessing_hash(plans: Plans) -> str:
    """Stable 16-hex hash of the part of the plans that preprocessing reads (channels, target spacing,
    normalisation, resampling): plans that differ only in networks, schedules or inference share their
    preprocessed cases."""
    data = plans.to_dict()
    return json_hash(_canonical({k: data[k] for k in _HASHED_TOP}))


def plans_hash(plans: Plans, stage: str | None = None) -> str:
    """Stable 16-hex hash of :func:`hashed_content`; with ``stage``, only the shared part and that stage."""
    return json_hash(hashed_content(plans, stage))
