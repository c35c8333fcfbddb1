"""FROC and operating-point search on hand-built candidates whose answers are worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cmbunet.evaluation.froc import (froc_curve, plot_froc, sensitivity_at, stage_points, subset_point,
                                     write_froc)
from cmbunet.evaluation.thresholds import (best_point, choose_min_size, greedy_merge, min_size_sweep,
                                           save_settings, threshold_sweep)

# Case A: references r0 (0,0,0), r1 (20,0,0); case B: r2 (0,0,0); case C: nothing (counts in FP/case).
REFERENCES = pd.DataFrame({"case": ["A", "A", "B"], "x_mm": [0.0, 20.0, 0.0], "y_mm": [0.0, 0.0, 0.0],
                           "z_mm": [0.0, 0.0, 0.0]})
#            c0 -> r0    c1 2nd hit r0  c2 far (FP)   c3 -> r1      c4 6 mm (FP)  c5 -> r2
POSITIONS = [(1, 0, 0), (0, 1.2, 0), (50, 50, 50), (20, 3, 0), (0, 0, 6), (0, 0, 2)]
CANDIDATES = pd.DataFrame({
    "case": ["A", "A", "A", "A", "B", "B"],
    "pos_x_mm": [p[0] for p in POSITIONS], "pos_y_mm": [p[1] for p in POSITIONS], "pos_z_mm": [p[2] for p in POSITIONS],
    "screening_score": [0.9, 0.8, 0.15, 0.5, 0.15, 0.35],
    "discrimination_score": [0.9, 0.8, 0.7, 0.4, 0.6, 0.3],
    "kept": [True, True, True, False, True, False],
})
NUM_CASES = 3


def test_froc_exact_values_and_duplicate_hit_is_false_positive():
    curve = froc_curve(CANDIDATES, REFERENCES, NUM_CASES, dist_mm=5.0)
    assert curve["threshold"].tolist() == [0.9, 0.8, 0.7, 0.6, 0.4, 0.3]
    assert curve["tp"].tolist() == [1, 1, 1, 1, 2, 3]
    # c1 is a second hit on r0: a false positive, as in the official metric
    assert curve["fp"].tolist() == [0, 1, 2, 3, 3, 3]
    np.testing.assert_allclose(curve["sensitivity"], np.array([1, 1, 1, 1, 2, 3]) / 3)
    np.testing.assert_allclose(curve["fp_per_case"], np.array([0, 1, 2, 3, 3, 3]) / 3)
    assert (np.diff(curve["sensitivity"]) >= 0).all() and (np.diff(curve["fp_per_case"]) >= 0).all()


def test_froc_distance_threshold_changes_links():
    # at 7 mm c4 (6 mm from r2) links to r2 first, so at threshold 0.6 it is the TP and c5 later a duplicate
    curve = froc_curve(CANDIDATES, REFERENCES, NUM_CASES, dist_mm=7.0).set_index("threshold")
    assert curve.loc[0.6, "tp"] == 2 and curve.loc[0.6, "fp"] == 2
    assert curve.loc[0.3, "tp"] == 3 and curve.loc[0.3, "fp"] == 3


def test_froc_candidate_links_to_nearest_reference_only():
    refs = pd.DataFrame({"case": ["A", "A"], "x_mm": [0.0, 4.0], "y_mm": [0.0, 0.0], "z_mm": [0.0, 0.0]})
    cand = CANDIDATES.iloc[:1].assign(pos_x_mm=3.0)  # 3 mm from the first, 1 mm from the second reference
    curve = froc_curve(cand, refs, 1, dist_mm=5.0)
    assert curve["tp"].tolist() == [1] and curve["fp"].tolist() == [0]
    assert curve["sensitivity"].tolist() == [0.5]


def test_stage_points_and_segmentation_from_per_case_counts():
    per_case = pd.DataFrame({"case": ["A", "B", "C"], "tp": [2, 0, 0], "fp": [1, 0, 2], "fn": [0, 1, 0]})
    stages = stage_points(CANDIDATES, REFERENCES, per_case, dist_mm=5.0).set_index("stage")
    assert stages.loc["screening", "tp"] == 3 and stages.loc["screening", "fp"] == 3
    assert stages.loc["discrimination", "tp"] == 1 and stages.loc["discrimination", "fp"] == 3  # kept c0 c1 c2 c4
    assert stages.loc["segmentation", "sensitivity"] == pytest.approx(2 / 3)
    assert stages.loc["segmentation", "fp_per_case"] == pytest.approx(1.0)
    none = subset_point(CANDIDATES, REFERENCES, NUM_CASES, np.zeros(6, bool))
    assert none["tp"] == 0 and none["fp"] == 0 and none["sensitivity"] == 0.0


def test_empty_inputs_give_empty_curve_and_nan_sensitivity():
    curve = froc_curve(CANDIDATES.iloc[:0], REFERENCES.iloc[:0], 2)
    assert curve.empty
    point = subset_point(CANDIDATES.iloc[:0], REFERENCES.iloc[:0], 2, np.zeros(0, bool))
    assert np.isnan(point["sensitivity"]) and point["fp_per_case"] == 0.0


def test_sensitivity_at_fp_levels():
    curve = froc_curve(CANDIDATES, REFERENCES, NUM_CASES, dist_mm=5.0)
    levels = sensitivity_at(curve, (0.0, 0.5, 1.0))
    assert levels == {0.0: pytest.approx(1 / 3), 0.5: pytest.approx(1 / 3), 1.0: pytest.approx(1.0)}


def test_plot_and_write_froc_from_validation_folders(tmp_path):
    folds = {}
    for fold, cases in (("0", ["A"]), ("1", ["B", "C"])):
        folder = tmp_path / f"fold_{fold}" / "validation"
        folder.mkdir(parents=True)
        for case in cases:
            CANDIDATES[CANDIDATES["case"] == case].drop(columns="case").to_csv(folder / f"{case}_candidates.csv", index=False)
        REFERENCES[REFERENCES["case"].isin(cases)].assign(kind="ref", label=1, volume_vox=5).to_csv(
            folder / "components.csv", index=False)
        pd.DataFrame({"case": cases, "tp": 0, "fp": 0, "fn": 0}).to_csv(folder / "metrics_per_case.csv", index=False)
        folds[fold] = folder
    files = write_froc(folds, tmp_path, dist_mm=5.0)
    curves = pd.read_csv(files["froc_csv"], dtype={"fold": str})
    pooled = curves[curves["fold"] == "pooled"]
    assert pooled["tp"].tolist() == [1, 1, 1, 1, 2, 3] and pooled["fp"].tolist() == [0, 1, 2, 3, 3, 3]
    fold1 = curves[curves["fold"] == "1"]  # B and C: 1 reference, FP/case over 2 cases
    assert fold1["fp_per_case"].tolist() == [0.5, 0.5] and fold1["sensitivity"].tolist() == [0.0, 1.0]
    assert files["froc_png"].stat().st_size > 5000
    assert plot_froc(curves, pd.read_csv(files["stages_csv"], dtype={"fold": str}), tmp_path / "again.png").is_file()


# ------------------------------------------------------------------------------------------------ thresholds
def test_greedy_merge_keeps_highest_and_drops_close_ones():
    pos = np.array([[0, 0, 0], [1, 0, 0], [2.5, 0, 0], [10, 0, 0]], float)
    keep = greedy_merge(pos, np.array([0.5, 0.9, 0.1, 0.2]), merge_mm=2.0)
    # 0.9 at x=1 suppresses x=0 (1 mm) and x=2.5 (1.5 mm); x=10 stays
    assert keep.tolist() == [False, True, False, True]


def test_sweep_values_without_merging():
    sweep = threshold_sweep(CANDIDATES, REFERENCES, NUM_CASES, [0.1], [0.85, 0.75, 0.5, 0.35, 0.25], merge_mm=0.0)
    # discrimination > td keeps: {c0}, {c0,c1}, {c0,c1,c2,c4}, {+c3}, {all}
    assert sweep["tp"].tolist() == [1, 1, 1, 2, 3]
    assert sweep["fp"].tolist() == [0, 1, 3, 3, 3]
    np.testing.assert_allclose(sweep["f1"], [2 / 4, 2 / 5, 2 / 7, 4 / 8, 6 / 9])


def test_threshold_search_finds_the_known_optimum():
    ts_grid, td_grid = [0.1, 0.2, 0.3, 0.4], [0.1, 0.25, 0.35, 0.5, 0.65, 0.75, 0.85]
    sweep = threshold_sweep(CANDIDATES, REFERENCES, NUM_CASES, ts_grid, td_grid, merge_mm=2.0)
    # merging removes the duplicate c1; ts 0.2/0.3 remove c2 and c4; td < 0.3 admits c5: F1 = 1
    at = sweep.set_index(["screening_threshold", "discrimination_threshold"])
    assert at.loc[(0.1, 0.25), "f1"] == pytest.approx(6 / 8)
    assert at.loc[(0.2, 0.25), "f1"] == pytest.approx(1.0)
    assert at.loc[(0.4, 0.25), "f1"] == pytest.approx(4 / 5)  # c5 (screening 0.35) lost
    best = best_point(sweep, default=(0.1, 0.5))
    # F1 = 1 at ts in {0.2, 0.3} x td in {0.1, 0.25}; nearest to the defaults is (0.2, 0.25)
    assert (best["screening_threshold"], best["discrimination_threshold"], best["f1"]) == (0.2, 0.25, 1.0)


def test_min_size_sweep_and_choice():
    comp = pd.DataFrame({
        "case": ["A", "A", "A", "A", "A", "B"], "kind": ["ref", "ref", "pred", "pred", "pred", "pred"],
        "x_mm": [0, 20, 0, 40, 20, 5], "y_mm": [0, 0, 0, 0, 0, 5], "z_mm": [0, 0, 1, 0, 0, 5],
        "volume_vox": [8, 8, 10, 2, 3, 1], "label": [1, 2, 1, 2, 3, 1]})
    table = min_size_sweep(comp, [0, 2, 3, 4]).set_index("min_component_voxels")
    np.testing.assert_allclose(table["f1"], [4 / 6, 4 / 5, 1.0, 2 / 3])
    assert choose_min_size(table.reset_index()) == 3
    flat = table.reset_index().assign(f1=0.5)
    assert choose_min_size(flat) == 0


def test_save_settings_merges_atomically(tmp_path):
    (tmp_path / "inference_settings.json").write_text(json.dumps({"tile_size": [64, 64, 32], "screening_threshold": 0.1}))
    save_settings(tmp_path, {"screening_threshold": 0.3, "cv_f1": float("nan")})
    saved = json.loads((tmp_path / "inference_settings.json").read_text())
    assert saved == {"tile_size": [64, 64, 32], "screening_threshold": 0.3, "cv_f1": None}
