"""How a dark spot curves: a ball (a microbleed) is told from a tube (a vein) in every orientation and on thick
slices, and the curvature rule drops a tube however round and probable it looks."""

from __future__ import annotations

import numpy as np
import pytest

from cmbunet.inference.blob import blob_ratios, relative_blob_ratios, round_spot_blob_ratio
from cmbunet.inference.decision import kept_candidates, measure_candidates
from cmbunet.plans.planner import SHAPE_MIN_BLOB_RATIO
from cmbunet.synthetic.generator import synthesize_case
from plan_helpers import make_plans

ISO, THICK = (0.5, 0.5, 0.5), (0.5, 0.5, 3.0)


def _render(spacing: tuple[float, ...], shape: tuple[int, int, int], darkness, seed: int = 0) -> np.ndarray:
    """A white-matter block with a dark object whose darkness (0-1) is a function of mm positions ``(..., 3)``,
    averaged over five positions through each voxel along the slice axis (a box-shaped slice profile), with
    noise."""
    axes = [np.arange(n) * s - n * s / 2 for n, s in zip(shape, spacing)]
    mm = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    dark = np.zeros(shape)
    for dz in np.linspace(-0.4, 0.4, 5) * spacing[2]:
        dark += darkness(mm + np.array([0.0, 0.0, dz])) / 5
    img = 0.55 * (1 - 0.8 * dark)
    return (img + np.random.default_rng(seed).normal(0, 0.01, shape)).astype(np.float32)


def _ball(radius: float):
    return lambda mm: (np.linalg.norm(mm, axis=-1) <= radius).astype(float)


def _tube(radius: float, direction: tuple[float, float, float]):
    d = np.asarray(direction, dtype=float) / np.linalg.norm(direction)
    return lambda mm: (np.linalg.norm(mm - (mm @ d)[..., None] * d, axis=-1) <= radius).astype(float)


def _centre(shape):
    return np.array([[n // 2 for n in shape]])


@pytest.mark.parametrize("spacing, shape", [(ISO, (40, 40, 40)), (THICK, (40, 40, 12))])
def test_a_ball_scores_near_one_and_tubes_in_every_orientation_below_the_plans_limit(spacing, shape):
    ball = _render(spacing, shape, _ball(1.2))
    assert relative_blob_ratios(ball, _centre(shape), spacing, spacing)[0] > 0.8
    # in plane, end-on, oblique; on 3 mm slices a tube at 45 degrees to them in one plane keeps half a ball's
    # curvature (0.47): the elongation of the shape rule is what drops those
    directions = [(1, 0, 0), (0, 0, 1), (1, 1, 0), (1, 1, 1)] + ([(1, 0, 1)] if spacing == ISO else [])
    for direction in directions:
        tube = _render(spacing, shape, _tube(0.8, direction))
        ratio = relative_blob_ratios(tube, _centre(shape), spacing, spacing)[0]
        assert ratio < SHAPE_MIN_BLOB_RATIO, (direction, ratio)


def test_round_spot_ratio_is_one_on_isotropic_voxels_and_lower_on_thick_slices():
    assert round_spot_blob_ratio(ISO) == pytest.approx(1.0)
    assert 0.1 < round_spot_blob_ratio(THICK, sigma_mm=(1.0, 1.0, 2.25)) < round_spot_blob_ratio(THICK) < 1.0
    flat = np.full((20, 20, 20), 0.5, np.float32)
    assert np.isnan(blob_ratios(flat, _centre(flat.shape), ISO)).all()  # no dark spot: not measured
    assert blob_ratios(flat, np.zeros((0, 3), int), ISO).shape == (0,)


def test_curvature_rule_drops_an_end_on_vein_whatever_its_probability():
    """The shape rule is off here: a vein crossing every slice is also long, the curvature rule alone is tested."""
    shape = (40, 40, 12)
    img = np.concatenate([_render(THICK, shape, _ball(1.2)), _render(THICK, shape, _tube(0.8, (0, 0, 1)), 1)])
    at = np.array([[20, 20, 6], [60, 20, 6]])
    probability = np.array([0.999, 0.999])
    settings = make_plans().inference.merged({"discrimination_threshold": 0.5, "shape_round_elongation": 1.5,
                                            "location_max_csf_share": None, "shape_max_elongation": None,
                                            "shape_min_blob_ratio": SHAPE_MIN_BLOB_RATIO})
    measures = measure_candidates(img[None], at, probability, settings, {"0": "T2S"}, THICK, THICK)
    assert measures.blob_ratio[0] > SHAPE_MIN_BLOB_RATIO > measures.blob_ratio[1]
    assert kept_candidates(probability, measures, settings).tolist() == [True, False]
    off = settings.merged({"shape_min_blob_ratio": None})
    unmeasured = measure_candidates(img[None], at, probability, off, {"0": "T2S"}, THICK, THICK)
    assert np.isnan(unmeasured.blob_ratio).all()
    assert kept_candidates(probability, unmeasured, off).tolist() == [True, True]


def test_generated_microbleeds_curve_like_balls_and_veins_do_not():
    """On subjects of the wider world (an isotropic and a 2.5 mm-slice site) the measure sorts what it is meant
    for: few microbleeds below the plans' limit, most veins of every kind below it."""
    cmb, veins = [], []
    for seed, site in ((7000, "iso3T"), (7001, "mid15T"), (7002, "thin15T")):
        case = synthesize_case(seed, "realistic", sites=[site])
        img, sp = case.images["T2S"], case.props["spacing"]
        objs = [(True, c["center_voxel"]) for c in case.cmbs] + [
            (False, m["center_voxel"]) for m in case.mimics if m["kind"].startswith("vein")]
        at = np.clip(np.rint([v for _, v in objs]).astype(int), 0, np.array(img.shape) - 1)
        for (is_cmb, _), r in zip(objs, relative_blob_ratios(img, at, sp, sp)):
            (cmb if is_cmb else veins).append(r)
    assert len(cmb) >= 5 and len(veins) >= 20
    assert np.mean(np.array(cmb) < SHAPE_MIN_BLOB_RATIO) <= 0.15
    assert np.mean(np.nan_to_num(np.array(veins), nan=-1.0) < SHAPE_MIN_BLOB_RATIO) >= 0.6
