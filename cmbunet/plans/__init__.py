"""Fingerprint, planner, the typed plans (:mod:`~cmbunet.plans.schema`), their I/O and overrides: how cmbunet
configures itself from a dataset."""

from __future__ import annotations

from typing import Any

from cmbunet.plans.overrides import apply_overrides
from cmbunet.plans.planner import PRESETS, plan_experiment
from cmbunet.plans.plans_io import load_plans, plans_hash, save_plans
from cmbunet.plans.schema import PLANS_VERSION, STAGES, InferenceSettings, Plans, Schedule

__all__ = [
    "PRESETS",
    "PLANS_VERSION",
    "STAGES",
    "Plans",
    "InferenceSettings",
    "Schedule",
    "plan_experiment",
    "apply_overrides",
    "load_plans",
    "plans_hash",
    "save_plans",
    "extract_fingerprint",
    "save_fingerprint",
    "load_fingerprint",
]


def __getattr__(name: str) -> Any:
    """Import the fingerprint lazily: it reads images, which planning from a saved fingerprint does not need."""
    if name in ("extract_fingerprint", "save_fingerprint", "load_fingerprint"):
        from cmbunet.plans import fingerprint

        return getattr(fingerprint, name)
    raise AttributeError(name)
