"""Intensity and resolution augmentation: reproducible, isolated from global random state, on by default in new
plans, off in old ones, and the thick-slice simulation acts across slices."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest

from cmbunet.plans import Plans
from cmbunet.plans.schema import Intensity
from cmbunet.plans.planner import INTENSITY_AUGMENTATION
from cmbunet.training.intensity_augmentation import augment_intensity
from plan_helpers import make_plans

OFF = {k: (0.0 if k.endswith("probability") else v) for k, v in INTENSITY_AUGMENTATION.items()}


def _patches(n: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 1, 20, 20, 16)).astype(np.float32)


def test_same_generator_same_batch_and_global_state_untouched():
    params = Intensity.from_dict(INTENSITY_AUGMENTATION)
    x = _patches()
    np.random.seed(123)
    random.seed(456)
    before_np, before_py = np.random.get_state()[1].copy(), random.getstate()
    a = augment_intensity(x, params, np.random.default_rng(7))
    assert np.array_equal(np.random.get_state()[1], before_np) and random.getstate() == before_py
    b = augment_intensity(x, params, np.random.default_rng(7))
    c = augment_intensity(x, params, np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(x, _patches()), "the input batch must not be modified"
    changed = (np.abs(a - x).reshape(len(x), -1).max(axis=1) > 1e-6).mean()
    assert 0.4 < changed < 0.98  # most patches see at least one transform, not all


def test_all_probabilities_zero_is_identity():
    x = _patches()
    assert np.array_equal(augment_intensity(x, Intensity.from_dict(OFF), np.random.default_rng(0)), x)


def test_low_resolution_simulation_smooths_across_slices_most():
    """Only the low-resolution transform, always on: the slice axis (2) loses more detail than in-plane."""
    only = dict(OFF, low_resolution_probability=1.0)
    x = _patches(128)
    y = augment_intensity(x, Intensity.from_dict(only), np.random.default_rng(1))
    rough = lambda a, ax: float(np.mean(np.diff(a, axis=ax) ** 2))  # noqa: E731
    # relative loss of high-frequency energy per axis (x is white noise: equal on every axis before)
    loss = [1 - rough(y, ax) / rough(x, ax) for ax in (2, 3, 4)]
    assert loss[2] > loss[0] + 0.05 and loss[2] > loss[1] + 0.05
    assert all(v > 0.0 for v in loss)


def test_plans_switch_it_on_and_old_plans_keep_it_off():
    plans = make_plans().to_dict()
    plans["augmentation"] = {"max_translation_vox": 3, "max_rotation_deg": 10.0, "flip_axes": [0],
                             "flip_probability": 0.5, "rotation_probability": 0.5,
                             "intensity": copy.deepcopy(INTENSITY_AUGMENTATION)}
    assert Plans.from_dict(plans).augmentation.intensity == Intensity.from_dict(INTENSITY_AUGMENTATION)
    old = copy.deepcopy(plans)
    del old["augmentation"]["intensity"]
    assert Plans.from_dict(old).augmentation.intensity is None
    bad = copy.deepcopy(plans)
    bad["augmentation"]["intensity"]["gamma_probability"] = 1.5
    with pytest.raises(ValueError, match="gamma_probability"):
        Plans.from_dict(bad)
    bad["augmentation"]["intensity"] = {"gamma": [0.7, 1.5]}
    with pytest.raises(ValueError, match="missing"):
        Plans.from_dict(bad)
