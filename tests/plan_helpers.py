"""Typed plans for tests: the planner's output for small made-up fingerprints, changed only through overrides
(so every plans object a test uses is one the planner could have written)."""

from __future__ import annotations

from typing import Sequence

from cmbunet.plans import Plans, plan_experiment

VALDO_SPACING = [0.49, 0.49, 0.8]


def dataset_json(channels: Sequence[str] = ("T2S",)) -> dict:
    return {"channel_names": {str(i): c for i, c in enumerate(channels)}}


def small_fingerprint(spacing: Sequence[float] = (1.0, 1.0, 1.5)) -> dict:
    """Three 60 x 70 x 30 cases at ``spacing`` with small CMBs (2 x 2 x 3 mm)."""
    return {"cases": [{"spacing": list(spacing), "shape_after_crop": [60, 70, 30]}] * 3,
            "cmbs": [{"extent_mm": [2.0, 2.0, 3.0]}] * 5}


def make_plans(channels: Sequence[str] = ("T2S",), preset: str = "tiny", overrides: Sequence[str] = (),
               spacing: Sequence[float] = (1.0, 1.0, 1.5)) -> Plans:
    """Real plans (``tiny`` preset by default) for 1 x 1 x 1.5 mm data with small CMBs."""
    return plan_experiment(small_fingerprint(spacing), dataset_json(channels), preset=preset,
                           overrides=list(overrides))


def paper_plans(overrides: Sequence[str] = (), channels: Sequence[str] = ("T2S",)) -> Plans:
    """Chen & Dou's plans (preset ``paper`` at VALDO spacing): blocks 20x20x16 / 24x24x20, patch 32x32x24, full
    widths."""
    fingerprint = {"cases": [{"spacing": VALDO_SPACING, "shape_after_crop": [400, 400, 150]}] * 3,
                   "cmbs": [{"extent_mm": [6.86, 6.86, 8.0]}] * 5}
    return plan_experiment(fingerprint, dataset_json(channels), preset="paper", overrides=list(overrides))
