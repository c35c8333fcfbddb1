"""Hand-built cases with known answers for the official VALDO task-2 metrics, plus agreement with a plain
loop-based implementation of the same rules on random blobs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from cmbunet.evaluation.valdo_metrics import (
    binarise_reference,
    case_metrics,
    component_centres_mm,
    label_components,
    link_components,
)

SHAPE = (24, 24, 24)
ISO = (1.0, 1.0, 1.0)


def cube(shape=SHAPE, corner=(10, 10, 10), size=3, value=1.0) -> np.ndarray:
    arr = np.zeros(shape, dtype=np.float32)
    x, y, z = corner
    arr[x : x + size, y : y + size, z : z + size] = value
    return arr


def voxels(points, shape=SHAPE, value=1.0) -> np.ndarray:
    arr = np.zeros(shape, dtype=np.float32)
    for p in points:
        arr[p] = value
    return arr


def scalars(m: dict) -> dict:
    return {k: v for k, v in m.items() if not k.endswith("_components")}


def test_exact_match_is_perfect():
    ref = cube() + cube(corner=(1, 1, 1), size=2)
    m = case_metrics(ref, ref.copy(), ISO)
    assert scalars(m) == {"f1": 1.0, "dice": 1.0, "count_diff": 0, "vol_diff": 0.0, "tp": 2, "fp": 0, "fn": 0,
                          "n_ref": 2, "n_pred": 2}
    assert m["pred_components"]["is_tp"].tolist() == [True, True]
    assert m["ref_components"]["detected"].tolist() == [True, True]


def test_one_voxel_shift_is_tp_with_partial_dice():
    ref = cube()
    pred = cube(corner=(11, 10, 10))
    m = case_metrics(ref, pred, ISO)
    assert (m["tp"], m["fp"], m["fn"], m["f1"]) == (1, 0, 0, 1.0)
    assert m["dice"] == pytest.approx(2 * 18 / 54)  # two 27-voxel cubes overlapping in 18 voxels
    assert m["vol_diff"] == 0.0
    assert m["pred_components"]["distance_mm"].iloc[0] == pytest.approx(1.0)
    # centre of mass in mm: mean voxel index 11,12,13 -> 12; 10,11,12 -> 11
    assert m["pred_components"][["x_mm", "y_mm", "z_mm"]].iloc[0].tolist() == pytest.approx([12.0, 11.0, 11.0])


def test_two_predictions_on_one_reference_nearest_is_tp_other_fp():
    ref = cube(corner=(9, 9, 9))  # centre (10, 10, 10)
    pred = voxels([(10, 10, 10), (13, 10, 10)])  # distances 0 and 3 mm, not touching
    m = case_metrics(ref, pred, ISO)
    assert (m["tp"], m["fp"], m["fn"], m["n_pred"]) == (1, 1, 0, 2)
    assert m["f1"] == pytest.approx(2 / 3)
    # Dice uses the union of both linked predictions: overlap 1 voxel, sizes 27 + 2
    assert m["dice"] == pytest.approx(2 * 1 / 29)
    comps = m["pred_components"]
    assert comps["is_tp"].tolist() == [True, False]
    assert comps["ref_label"].tolist() == [1, 1]


def test_equidistant_predictions_give_exactly_one_tp():
    ref = voxels([(10, 10, 10)])
    pred = voxels([(8, 10, 10), (12, 10, 10)])
    linked, dist, is_tp = link_components(np.array([[8.0, 10, 10], [12.0, 10, 10]]), np.array([[10.0, 10, 10]]), 5.0)
    assert linked.tolist() == [0, 0] and dist.tolist() == [2.0, 2.0] and is_tp.tolist() == [True, False]
    m = case_metrics(ref, pred, ISO)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 1, 0)


@pytest.mark.parametrize(
    "spacing_x, expect_tp",
    [(1.0, 0), (1.002, 0), (0.998, 1)],  # 5 voxels apart: exactly 5 mm (not < 5), 5.01 mm, 4.99 mm
)
def test_distance_threshold_is_strict(spacing_x, expect_tp):
    ref = voxels([(5, 10, 10)])
    pred = voxels([(10, 10, 10)])
    m = case_metrics(ref, pred, (spacing_x, 1.0, 1.0), dist_mm=5.0)
    assert m["tp"] == expect_tp
    assert m["fp"] == 1 - expect_tp and m["fn"] == 1 - expect_tp
    assert m["f1"] == float(expect_tp)
    assert m["pred_components"]["distance_mm"].iloc[0] == pytest.approx(5 * spacing_x)


def test_dist_parameter_changes_outcome():
    ref = voxels([(5, 10, 10)])
    pred = voxels([(8, 10, 10)])
    assert case_metrics(ref, pred, ISO, dist_mm=5.0)["tp"] == 1
    assert case_metrics(ref, pred, ISO, dist_mm=3.0)["tp"] == 0
    assert case_metrics(ref, pred, ISO, dist_mm=3.01)["tp"] == 1


def test_empty_prediction_scores_zero():
    ref = cube() + cube(corner=(1, 1, 1), size=2)
    m = case_metrics(ref, np.zeros(SHAPE), (0.5, 0.5, 2.0))
    assert scalars(m) == {"f1": 0.0, "dice": 0.0, "count_diff": 2, "vol_diff": 35 * 0.5, "tp": 0, "fp": 0, "fn": 2,
                          "n_ref": 2, "n_pred": 0}
    assert len(m["pred_components"]) == 0
    assert m["ref_components"]["detected"].tolist() == [False, False]


def test_empty_reference_makes_every_prediction_fp_and_scores_nan():
    pred = cube() + voxels([(1, 1, 1), (20, 20, 20)])
    m = case_metrics(np.zeros(SHAPE), pred, ISO)
    assert math.isnan(m["f1"]) and math.isnan(m["dice"])
    assert (m["tp"], m["fp"], m["fn"], m["n_pred"], m["count_diff"]) == (0, 3, 0, 3, 3)
    assert m["vol_diff"] == 29.0
    assert not m["pred_components"]["is_tp"].any()


def test_both_empty_is_nan_with_zero_counts():
    m = case_metrics(np.zeros(SHAPE), np.zeros(SHAPE), ISO)
    assert math.isnan(m["f1"]) and math.isnan(m["dice"])
    assert (m["tp"], m["fp"], m["fn"], m["count_diff"], m["vol_diff"]) == (0, 0, 0, 0, 0.0)


def test_corner_touching_voxels_are_one_component():
    corner_pair = voxels([(10, 10, 10), (11, 11, 11)])
    m = case_metrics(corner_pair, corner_pair, ISO)
    assert (m["n_ref"], m["n_pred"], m["tp"], m["fp"]) == (1, 1, 1, 0)
    apart = voxels([(10, 10, 10), (12, 12, 12)])
    m2 = case_metrics(apart, apart, ISO)
    assert (m2["n_ref"], m2["n_pred"], m2["tp"]) == (2, 2, 2)
    # a corner pair predicted against two separate reference voxels: one prediction, one reference found
    m3 = case_metrics(voxels([(10, 10, 10), (12, 12, 12)]), corner_pair, ISO)
    assert (m3["n_ref"], m3["n_pred"], m3["tp"], m3["fn"], m3["count_diff"]) == (2, 1, 1, 1, 1)


def test_anisotropic_spacing_is_measured_in_mm_not_voxels():
    spacing = (0.5, 0.5, 3.0)
    ref = voxels([(10, 10, 10)])
    # 2 voxels along z = 6 mm: beyond 5 mm although only 2 voxels away
    m = case_metrics(ref, voxels([(10, 10, 12)]), spacing)
    assert (m["tp"], m["fp"], m["fn"]) == (0, 1, 1)
    assert m["pred_components"]["distance_mm"].iloc[0] == pytest.approx(6.0)
    # 8 voxels along x = 4 mm: within although 8 voxels away
    m = case_metrics(ref, voxels([(18, 10, 10)]), spacing)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 0, 0)
    assert m["vol_diff"] == 0.0


def test_probability_threshold_and_clipped_volume():
    spacing = (0.5, 0.5, 2.0)  # voxel volume 0.5 mm^3
    ref = cube(corner=(10, 10, 10), size=2)
    below = cube(corner=(10, 10, 10), size=2, value=0.4)
    m = case_metrics(ref, below, spacing)
    assert (m["n_pred"], m["f1"], m["dice"]) == (0, 0.0, 0.0)
    assert m["vol_diff"] == pytest.approx(8 * 0.5)  # 0.4 is clipped to 0
    pred = cube(corner=(10, 10, 10), size=2, value=0.6) + cube(corner=(14, 14, 14), size=2, value=0.4)
    m = case_metrics(ref, pred, spacing)
    assert (m["n_pred"], m["tp"], m["fp"], m["f1"], m["dice"]) == (1, 1, 0, 1.0, 1.0)
    assert m["vol_diff"] == pytest.approx(abs(8 * 0.6 - 8) * 0.5)  # sums the clipped soft values
    assert m["pred_components"]["max_prob"].iloc[0] == pytest.approx(0.6)
    exactly_half = cube(corner=(10, 10, 10), size=2, value=0.5)
    assert case_metrics(ref, exactly_half, spacing)["tp"] == 1


def test_reference_is_rounded_to_one_decimal_then_binarised():
    ref = voxels([(10, 10, 10)], value=0.96) + voxels([(3, 3, 3)], value=0.04) + voxels([(20, 3, 3)], value=0.3)
    assert binarise_reference(ref).sum() == 1
    m = case_metrics(ref, voxels([(10, 10, 10)]), ISO)
    assert (m["n_ref"], m["tp"], m["dice"], m["vol_diff"]) == (1, 1, 1.0, 0.0)


def test_centres_equal_scipy_center_of_mass_times_spacing():
    rng = np.random.default_rng(3)
    mask = random_blobs(rng, (30, 26, 14), 10, 0.8)
    labels, n = label_components(mask)
    spacing = (0.45, 0.6, 3.0)
    want = np.array(ndimage.center_of_mass(mask, labels, np.arange(1, n + 1))) * np.array(spacing)
    assert n > 3
    np.testing.assert_allclose(component_centres_mm(labels, n, spacing), want, rtol=1e-12)


def test_integer_and_float_references_agree():
    ref = cube() + cube(corner=(1, 1, 1), size=2)
    pred = cube(corner=(11, 10, 10), value=0.8)
    as_float = scalars(case_metrics(ref.astype(np.float32) * 0.99, pred, ISO))
    assert scalars(case_metrics(ref.astype(np.uint8), pred, ISO)) == as_float
    assert scalars(case_metrics(ref > 0, pred, ISO)) == as_float


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="one shape"):
        case_metrics(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), ISO)


# ---------------------------------------------------------------------------------------------------------
# An independent, deliberately plain implementation of the official rules (loops over components).


def plain_metrics(reference, prediction, spacing, dist_mm):
    ref = np.round(reference.astype(np.float64), 1) >= 0.5
    clipped = np.where(prediction >= 0.5, prediction.astype(np.float64), 0.0)
    ref_lab, n_ref = ndimage.label(ref, structure=np.ones((3, 3, 3)))
    pred_lab, n_pred = ndimage.label(clipped > 0, structure=np.ones((3, 3, 3)))
    sp = np.array(spacing)
    ref_c = [np.argwhere(ref_lab == r).mean(axis=0) * sp for r in range(1, n_ref + 1)]
    pred_c = [np.argwhere(pred_lab == s).mean(axis=0) * sp for s in range(1, n_pred + 1)]
    link, dist = [], []
    for s in range(n_pred):
        best, best_d = -1, math.inf
        for r in range(n_ref):
            d = math.sqrt(sum((pred_c[s][i] - ref_c[r][i]) ** 2 for i in range(3)))
            if d < best_d:
                best, best_d = r, d
        link.append(best if best_d < dist_mm else -1)
        dist.append(best_d)
    tp_of_ref = {}
    for s in range(n_pred):
        r = link[s]
        if r >= 0 and (r not in tp_of_ref or dist[s] < dist[tp_of_ref[r]]):
            tp_of_ref[r] = s
    tp = len(tp_of_ref)
    fp, fn = n_pred - tp, n_ref - tp
    if n_ref == 0:
        f1 = dice = math.nan
    elif n_pred == 0:
        f1 = dice = 0.0
    else:
        f1 = 2 * tp / (2 * tp + fn + fp)
        dices = []
        for r in tp_of_ref:
            ref_mask = ref_lab == r + 1
            union = np.zeros_like(ref_mask)
            for s in range(n_pred):
                if link[s] == r:
                    union |= pred_lab == s + 1
            dices.append(2 * (ref_mask & union).sum() / (ref_mask.sum() + union.sum()))
        dice = float(np.mean(dices)) if dices else 0.0
    vol = abs(clipped.sum() - ref.sum()) * float(np.prod(sp))
    return {"f1": f1, "dice": dice, "count_diff": abs(n_ref - n_pred), "vol_diff": vol, "tp": tp, "fp": fp,
            "fn": fn, "n_ref": n_ref, "n_pred": n_pred}


def random_blobs(rng, shape, n, p_keep):
    seeds = np.zeros(shape, dtype=bool)
    idx = tuple(rng.integers(0, s, size=n) for s in shape)
    seeds[idx] = True
    blobs = ndimage.binary_dilation(seeds, iterations=int(rng.integers(1, 3)))
    return blobs & (rng.random(shape) < p_keep)


@pytest.mark.parametrize("seed", range(8))
def test_agrees_with_plain_implementation_on_random_blobs(seed):
    rng = np.random.default_rng(seed)
    shape = (40, 36, 18)
    spacing = tuple(float(v) for v in rng.choice([0.45, 0.5, 0.8, 1.0, 3.0], size=3))
    ref = random_blobs(rng, shape, 12, 0.8).astype(np.float32)
    ref += rng.normal(0, 0.02, shape).astype(np.float32) * ref  # compression-like noise on the labels
    # prediction: a perturbed copy of the reference plus extra blobs, as probabilities
    moved = np.roll(ref > 0.5, shift=tuple(int(v) for v in rng.integers(-1, 2, size=3)), axis=(0, 1, 2))
    pred_mask = (moved & (rng.random(shape) < 0.9)) | random_blobs(rng, shape, 6, 0.7)
    pred = np.where(pred_mask, rng.uniform(0.42, 1.0, shape), rng.uniform(0.0, 0.45, shape)).astype(np.float32)
    dist = float(rng.choice([2.0, 3.0, 5.0, 8.0]))
    got = scalars(case_metrics(ref, pred, spacing, dist_mm=dist))
    want = plain_metrics(ref, pred, spacing, dist)
    assert want["n_ref"] > 3 and want["n_pred"] > 3  # the case is not trivial
    for key in ("tp", "fp", "fn", "n_ref", "n_pred", "count_diff"):
        assert got[key] == want[key], key
    for key in ("f1", "dice", "vol_diff"):
        assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-9), key
