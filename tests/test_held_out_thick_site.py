"""The bar on a thick-slice site the project never trained on, with the networks out of the picture.

thick15T (3-3.5 mm slices, 1.5 T) is a site no benchmark trains on or holds out. Every clearly dark spot of its
subjects is proposed with probability 1, as a model that learned another generator's look would propose them,
and the measured rules of the plans (shape, round-spot, curvature, in-plane elongation, location) decide alone.
What they must do is the bar of a detector a rater would trust: keep the small microbleeds that partial volume
leaves faint, drop the veins crossing the slices and the calcifications of the choroid plexus and pineal gland.
The first test holds what the rules do now; the second is the bar they do not reach yet
(documentation/experiments.md, "Through-slice continuation" and "In-plane elongation on thick slices").
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cmbunet.inference.decision import kept_candidates, measure_candidates
from cmbunet.synthetic.generator import synthesize_case
from plan_helpers import make_plans

SEEDS = (7100, 7101, 7107, 7108)  # small microbleeds in the first two, CSF calcifications in the others
SMALL_CMB_MM = 1.3
CSF_CALCIFICATIONS = ("calcification_choroid_plexus", "calcification_pineal", "calcification_falx")


def _dark_minima(img: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Every clearly dark local minimum of a scan: darker than its 12 mm surroundings by 15% of the brain's median."""
    smooth = ndimage.gaussian_filter(img, [0.6 / s for s in spacing])
    footprint = [max(3, int(round(4.0 / s)) | 1) for s in spacing]
    background = ndimage.uniform_filter(smooth, [max(3, int(round(12.0 / s)) | 1) for s in spacing])
    minima = (smooth == ndimage.minimum_filter(smooth, size=footprint)) & (img > 0)
    minima &= background - smooth > 0.15 * np.median(img[img > 0])
    return np.argwhere(minima)


def _near(mm: np.ndarray, centre_voxel, spacing: np.ndarray, reach_mm: float) -> np.ndarray:
    return np.linalg.norm(mm - np.asarray(centre_voxel) * spacing, axis=1) <= reach_mm


@pytest.fixture(scope="module")
def kept_by_object() -> dict[str, np.ndarray]:
    """Whether the plans' rules keep each dark spot, by the object it lies on (spots near a microbleed count only
    for it)."""
    settings = make_plans().inference  # the planner's rules and limits, whatever they become
    kept: dict[str, list[bool]] = {"small_cmb": [], "vein": [], "csf_calcification": []}
    for seed in SEEDS:
        case = synthesize_case(seed, "realistic", sites=["thick15T"])
        img, spacing = case.images["T2S"], np.asarray(case.props["spacing"], dtype=float)
        at = _dark_minima(img, spacing)
        mm = at * spacing
        near_cmb, small = np.zeros(len(at), bool), np.zeros(len(at), bool)
        for c in case.cmbs:
            here = _near(mm, c["center_voxel"], spacing, c["radius_mm"] + 2.0)
            near_cmb |= here
            small |= here & (c["radius_mm"] <= SMALL_CMB_MM)
        vein, calcification = np.zeros(len(at), bool), np.zeros(len(at), bool)
        for m in case.mimics:
            if m["kind"].startswith("vein"):
                vein |= _near(mm, m["center_voxel"], spacing, m["length_mm"] / 2 + 1.0)
            elif m["kind"] in CSF_CALCIFICATIONS:
                calcification |= _near(mm, m["center_voxel"], spacing, m["max_radius_mm"] + 1.5)
        probability = np.ones(len(at))
        keep = kept_candidates(probability, measure_candidates(img[None], at, probability, settings, {"0": "T2S"},
                                                               spacing, spacing), settings)
        kept["small_cmb"] += keep[small].tolist()
        kept["vein"] += keep[vein & ~near_cmb].tolist()
        kept["csf_calcification"] += keep[calcification & ~near_cmb].tolist()
    return {k: np.array(v, dtype=bool) for k, v in kept.items()}


def test_rules_keep_small_microbleeds_and_drop_most_vein_spots_on_a_held_out_thick_site(kept_by_object):
    k = kept_by_object
    print({name: f"{int(v.sum())}/{len(v)} kept" for name, v in k.items()})
    assert len(k["small_cmb"]) >= 8 and len(k["vein"]) >= 100 and len(k["csf_calcification"]) >= 5
    assert k["small_cmb"].mean() >= 0.85
    assert k["vein"].mean() < 0.15  # 26 of 265 with the in-plane elongation rule, 43 without it


@pytest.mark.xfail(strict=True, reason="the bar of issue 26, not met: round vein dots on 3 mm slices and CSF "
                                       "calcifications look like microbleeds to every measured rule")
def test_bar_veins_and_csf_calcifications_dropped_on_a_held_out_thick_site(kept_by_object):
    k = kept_by_object
    assert k["small_cmb"].mean() >= 0.85
    assert k["vein"].mean() <= 0.05
    assert k["csf_calcification"].mean() <= 0.1
