"""Where a dark spot lies: a calcification in CSF is told from a microbleed in parenchyma, beside CSF or not."""

from __future__ import annotations

import numpy as np

from cmbunet.inference.decision import kept_candidates, measure_candidates
from cmbunet.inference.location import csf_level, csf_shares
from cmbunet.inference.shape import dark_spots
from cmbunet.plans.planner import LOCATION_MAX_CSF_SHARE
from cmbunet.synthetic.generator import synthesize_case
from plan_helpers import make_plans

SPACING = (0.8, 0.8, 1.6)
WM, GM, CSF = 0.52, 0.68, 1.0


def _scene(seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A noisy white-matter block with a grey-matter band, a CSF-filled 'ventricle' and a zero background
    margin; dark balls of 1.2 mm radius in the ventricle's middle, in parenchyma touching the ventricle's wall,
    deep in white matter, and in grey matter."""
    shape = (70, 70, 36)
    mm = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, SPACING)], indexing="ij"), axis=-1)
    img = np.full(shape, WM, np.float32)
    img[:, 45:60, :] = GM
    ventricle = np.all(np.abs(mm - np.array([20.0, 20.0, 28.0])) <= np.array([8.0, 6.0, 8.0]), axis=-1)
    img[ventricle] = CSF
    centres_mm = {"in_csf": np.array([20.0, 20.0, 28.0]), "beside_csf": np.array([20.0, 27.6, 28.0]),
                  "white_matter": np.array([40.0, 20.0, 28.0]), "grey_matter": np.array([30.0, 42.0, 28.0])}
    for c in centres_mm.values():
        img[np.linalg.norm(mm - c, axis=-1) <= 1.2] *= 0.2
    img += np.random.default_rng(seed).normal(0, WM / 15, shape).astype(np.float32)
    img[:3], img[-3:] = 0, 0  # outside the brain
    return img, {k: np.rint(c / np.array(SPACING)).astype(int) for k, c in centres_mm.items()}


def test_csf_level_lies_between_grey_matter_and_csf():
    img, _ = _scene()
    assert GM < csf_level(img) < CSF
    assert csf_level(np.zeros((10, 10, 10), np.float32)) == float("inf")  # nothing to split


def test_a_spot_in_csf_is_told_from_spots_in_parenchyma():
    img, centres = _scene()
    names = list(centres)
    at = np.array([centres[k] for k in names])
    shares = dict(zip(names, csf_shares(img, dark_spots(img, at, SPACING), at, SPACING, csf_level(img))))
    assert shares["in_csf"] > 0.9
    assert shares["white_matter"] < 0.05 and shares["grey_matter"] < 0.05
    # CSF on one side only: kept under the plans' limit
    assert 0.1 < shares["beside_csf"] < LOCATION_MAX_CSF_SHARE


def test_location_rule_drops_a_round_spot_in_csf_whatever_its_probability():
    img, centres = _scene()
    at = np.array([centres["in_csf"], centres["white_matter"]])
    probability = np.array([0.999, 0.999])
    settings = make_plans().inference.merged({"discrimination_threshold": 0.5, "shape_round_elongation": 1.5,
                                            "location_max_csf_share": LOCATION_MAX_CSF_SHARE})
    measures = measure_candidates(img[None], at, probability, settings, {"0": "T2S"}, SPACING, SPACING)
    assert measures.csf_share[0] > LOCATION_MAX_CSF_SHARE > measures.csf_share[1]
    assert kept_candidates(probability, measures, settings).tolist() == [False, True]
    # without a limit both are kept
    off = settings.merged({"location_max_csf_share": None})
    unmeasured = measure_candidates(img[None], at, probability, off, {"0": "T2S"}, SPACING, SPACING)
    assert np.isnan(unmeasured.csf_share).all()  # the CSF level is not looked for when the rule is off
    assert kept_candidates(probability, unmeasured, off).tolist() == [True, True]


def test_generated_choroid_plexus_calcifications_lie_in_csf_and_microbleeds_do_not():
    """On subjects of the wider world the measure sorts the objects it is meant for: most microbleeds well below
    the limit, the calcifications of the choroid plexus and pineal gland above it more often than not."""
    cmb, csf_calc = [], []
    for seed in (7000, 7001, 7005):
        case = synthesize_case(seed, "realistic", sites=["iso3T"])
        img, sp = case.images["T2S"], case.props["spacing"]
        objs = [(True, c["center_voxel"]) for c in case.cmbs] + [
            (False, m["center_voxel"]) for m in case.mimics if m["kind"] in ("calcification_choroid_plexus",
                                                                              "calcification_pineal")]
        at = np.clip(np.rint([v for _, v in objs]).astype(int), 0, np.array(img.shape) - 1)
        shares = csf_shares(img, dark_spots(img, at, sp), at, sp, csf_level(img))
        for (is_cmb, _), s in zip(objs, shares):
            (cmb if is_cmb else csf_calc).append(s)
    assert len(cmb) >= 5 and len(csf_calc) >= 3
    assert np.mean(np.array(cmb) > LOCATION_MAX_CSF_SHARE) <= 0.1
    assert np.median(csf_calc) > np.median(cmb) + 0.3
