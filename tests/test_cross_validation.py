"""Cross-validation summary on hand-made fold summaries, and validate_fold -> cmbunet_evaluate_cv ->
cmbunet_find_thresholds end to end on real preprocessed synthetic cases with small random-weight models."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cmbunet.evaluation import cross_validation as cv
from cmbunet.evaluation import thresholds
from cmbunet.evaluation.evaluate import CASE_COLUMNS, aggregate_metrics, evaluate_folders, write_evaluation
from cmbunet.imageio import SimpleITKIO
from cmbunet.plans import STAGES

NAN = math.nan


# ------------------------------------------------------------------------------------------------ cv table
def _per_case(rows: list[tuple]) -> pd.DataFrame:
    """Rows of (case, f1, dice, count_diff, vol_diff, tp, fp, fn, n_ref, n_pred)."""
    table = pd.DataFrame(rows, columns=CASE_COLUMNS[:10])
    return table.assign(missing=False, reference="", prediction="")


FOLDS = {
    "0": _per_case([("a", 1.0, 0.8, 0, 10.0, 2, 0, 0, 2, 2), ("b", NAN, NAN, 1, 30.0, 0, 1, 0, 0, 1)]),
    "1": _per_case([("c", 0.5, 0.6, 1, 5.0, 1, 1, 1, 2, 2), ("d", 0.0, 0.0, 1, 15.0, 0, 0, 1, 1, 0)]),
    "2": _per_case([("e", NAN, NAN, 0, 0.0, 0, 0, 0, 0, 0)]),  # no CMB anywhere: F1, Dice, sensitivity undefined
}


@pytest.fixture()
def summaries(tmp_path) -> dict:
    """Each fold written by the real evaluation writer (NaN -> null) and read back."""
    out = {}
    for fold, per_case in FOLDS.items():
        write_evaluation(per_case, aggregate_metrics(per_case), tmp_path / fold, dist_mm=5.0)
        out[fold] = cv.load_fold_summary(tmp_path / fold / "summary.json")
    return out


def test_cv_table_per_fold_mean_and_pooled_match_hand_computation(summaries):
    table = cv.cv_table(summaries).set_index("fold")
    assert list(table.index) == ["0", "1", "2", "mean", "pooled"]
    # fold rows: F1/Dice over cases with CMBs, differences over all cases
    assert table.loc["0", ["f1_mean", "dice_mean", "count_diff_mean", "vol_diff_mean"]].tolist() == [1.0, 0.8, 0.5, 20.0]
    assert table.loc["1", ["f1_mean", "dice_mean", "count_diff_mean", "vol_diff_mean"]].tolist() == [0.25, 0.3, 1.0, 10.0]
    assert np.isnan(table.loc["2", "f1_mean"]) and np.isnan(table.loc["2", "sensitivity"])
    assert table.loc["2", "fp_per_case"] == 0.0
    assert table.loc["0", "precision"] == pytest.approx(2 / 3) and table.loc["1", "sensitivity"] == pytest.approx(1 / 3)
    # mean of folds skips undefined values
    mean = table.loc["mean"]
    assert mean["f1_mean"] == pytest.approx(0.625) and mean["dice_mean"] == pytest.approx(0.55)
    assert mean["count_diff_mean"] == pytest.approx(0.5) and mean["vol_diff_mean"] == pytest.approx(10.0)
    assert mean["sensitivity"] == pytest.approx((1 + 1 / 3) / 2)
    # pooled: all five cases together, counts summed
    pooled = table.loc["pooled"]
    assert pooled["f1_mean"] == pytest.approx(0.5) and pooled["dice_mean"] == pytest.approx(1.4 / 3)
    assert pooled["count_diff_mean"] == pytest.approx(0.6) and pooled["vol_diff_mean"] == pytest.approx(12.0)
    assert (pooled["tp"], pooled["fp"], pooled["fn"]) == (3, 2, 2)
    assert pooled["sensitivity"] == pytest.approx(0.6) and pooled["precision"] == pytest.approx(0.6)
    assert pooled["fp_per_case"] == pytest.approx(0.4) and pooled["num_cases"] == 5
    assert "n/a" in cv.format_table(table.reset_index())


def test_unreadable_summary_is_a_clear_error(tmp_path):
    from cmbunet.errors import InputError

    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(InputError, match="summary.json"):
        cv.load_fold_summary(tmp_path / "summary.json")


# ------------------------------------------------------------------------------------------------ end to end
def _write_random_model(model_dir: Path, folds: tuple[str, ...]) -> None:
    """Checkpoints as cmbunet_train writes them, with seeded random weights (training is too slow for a test)."""
    from cmbunet.networks import build_network
    from cmbunet.plans.plans_io import load_plans, plans_hash

    plans = load_plans(model_dir / "plans.json")
    for f_i, fold in enumerate(folds):
        for s_i, stage in enumerate(STAGES):
            torch.manual_seed(10 * f_i + s_i)
            net = build_network(stage, plans)
            (model_dir / f"fold_{fold}" / stage).mkdir(parents=True, exist_ok=True)
            torch.save({"stage": stage, "epoch": 0, "weights": net.state_dict(), "plans_hash": plans_hash(plans)},
                       model_dir / f"fold_{fold}" / stage / "checkpoint_final.pth")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> dict:
    from cmbunet.plan_and_preprocess import main as plan_main
    from cmbunet.synthetic.writer import write_dataset

    root = tmp_path_factory.mktemp("cv")
    roots = {k: root / k for k in ("raw", "pre", "res")}
    name = "Dataset042_CV"
    write_dataset(roots["raw"] / name, 3, layout="raw", seed=3, size="small")
    with pytest.warns(UserWarning, match="3 folds"):
        assert plan_main(["-d", "42", "--preset", "tiny", "-np", "1", "--raw-root", str(roots["raw"]),
                          "--preprocessed-root", str(roots["pre"])]) == 0
    model_dir = roots["res"] / name / "cmbunet"
    model_dir.mkdir(parents=True)
    plans = json.loads((roots["pre"] / name / "plans.json").read_text())
    plans["inference"]["max_candidates"] = 12  # inference settings are not part of the plans hash
    (model_dir / "plans.json").write_text(json.dumps(plans))
    _write_random_model(model_dir, ("0", "1"))  # fold 2 is left untrained
    return {"name": name, "model_dir": model_dir, **roots}


def _roots(p: dict) -> list[str]:
    return ["--results-root", str(p["res"]), "--raw-root", str(p["raw"]), "--preprocessed-root", str(p["pre"])]


def test_validate_evaluate_cv_and_find_thresholds_end_to_end(project, capsys):
    name, model_dir = project["name"], project["model_dir"]
    assert cv.main(["-d", "42", "--predict-missing", *_roots(project)]) == 0
    printed = capsys.readouterr().out
    assert "fold 0: ok" in printed and "fold 1: ok" in printed and "fold 2: not evaluated" in printed
    assert "fold 2: not evaluated (0 of 1 validation cases predicted); no model folder" in printed

    splits = json.loads((project["pre"] / name / "splits_final.json").read_text())
    for fold in ("0", "1"):
        val = model_dir / f"fold_{fold}" / "validation"
        for case in splits[int(fold)]["val"]:
            binary, geometry = SimpleITKIO.read_seg(val / f"{case}.nii.gz")
            _, ref_geometry = SimpleITKIO.read_seg(project["raw"] / name / "labelsTr" / f"{case}.nii.gz")
            assert geometry["shape"] == ref_geometry["shape"]
            np.testing.assert_allclose(geometry["spacing"], ref_geometry["spacing"], rtol=1e-5)
            assert set(np.unique(binary)) <= {0, 1}
            prob, _ = SimpleITKIO.read_seg(val / f"{case}_probabilities.nii.gz")
            np.testing.assert_array_equal(binary, (prob >= 0.5).astype(np.uint8))
            cand = pd.read_csv(val / f"{case}_candidates.csv")
            assert 0 < len(cand) <= 12
            assert {"screening_score", "discrimination_score", "kept", "pos_x_mm"} <= set(cand.columns)
            np.testing.assert_allclose(cand["pos_x_mm"], cand["native_i"] * geometry["spacing"][0], rtol=1e-6)
        # our evaluation equals the official folder evaluation against the raw labels
        ours = pd.read_csv(val / "metrics_per_case.csv")
        labels = project["raw"] / "lbl" / fold
        labels.mkdir(parents=True)
        for case in ours["case"]:
            shutil.copy(project["raw"] / name / "labelsTr" / f"{case}.nii.gz", labels)
        official, _ = evaluate_folders(labels, val)
        columns = ["tp", "fp", "fn", "n_ref", "n_pred", "vol_diff", "f1", "dice", "count_diff"]
        np.testing.assert_allclose(ours[columns].to_numpy(float), official[columns].to_numpy(float), rtol=1e-5)

    table = pd.read_csv(model_dir / "cv_table.csv", dtype={"fold": str}).set_index("fold")
    assert list(table.index) == ["0", "1", "mean", "pooled"]
    assert table.loc["pooled", "num_cases"] == 2
    assert table.loc["pooled", "tp"] == table.loc["0", "tp"] + table.loc["1", "tp"]
    summary = json.loads((model_dir / "cv_summary.json").read_text())
    assert summary["folds"] == ["0", "1"] and "not evaluated" in summary["fold_status"]["2"]
    froc = pd.read_csv(model_dir / "froc.csv", dtype={"fold": str})
    assert set(froc["fold"]) == {"0", "1", "pooled"} and (model_dir / "froc.png").stat().st_size > 5000

    # a second run predicts nothing again (idempotent) and re-evaluates at another distance
    val0 = model_dir / "fold_0" / "validation"
    stamp = (val0 / f"{splits[0]['val'][0]}.nii.gz").stat().st_mtime_ns
    assert cv.validate_fold(name, 0, project["pre"], project["res"], raw_root=project["raw"], dist_mm=3.0) == val0
    assert (val0 / f"{splits[0]['val'][0]}.nii.gz").stat().st_mtime_ns == stamp
    assert json.loads((val0 / "summary.json").read_text())["dist_mm"] == 3.0
    assert cv.validate_fold(name, "all", project["pre"], project["res"]) is None

    # operating point: written next to the model and read by the predictor
    assert thresholds.main(["-d", "42", "--results-root", str(project["res"]), "--dist", "3"]) == 0
    assert "chosen" in capsys.readouterr().out
    chosen = json.loads((model_dir / "inference_settings.json").read_text())
    assert set(chosen) == {"screening_threshold", "discrimination_threshold", "min_component_voxels",
                           "selected_by", "cv_f1"}
    assert 0.0 <= chosen["cv_f1"] <= 1.0 and chosen["screening_threshold"] >= plans_default(model_dir)
    from cmbunet.inference.predictor import CMBPredictor

    predictor = CMBPredictor.from_model_folder(model_dir, folds=[0])
    assert predictor.settings.discrimination_threshold == chosen["discrimination_threshold"]


def plans_default(model_dir: Path) -> float:
    return json.loads((model_dir / "plans.json").read_text())["inference"]["screening_threshold"]


def test_cv_cli_reports_missing_validation_clearly(project, capsys):
    fresh = project["res"].parent / "res_empty"
    (fresh / project["name"] / "cmbunet").mkdir(parents=True)
    code = cv.main(["-d", "42", "--results-root", str(fresh), "--raw-root", str(project["raw"]),
                    "--preprocessed-root", str(project["pre"])])
    captured = capsys.readouterr()
    assert code == 2 and "no fold of Dataset042_CV has validation results" in captured.err
    assert "fold 0: not evaluated (0 of 1 validation cases predicted); no model folder" in captured.out


def test_validation_ignores_tuned_inference_settings(project):
    """A tuned inference_settings.json must not change the validation predictions it was tuned on."""
    model_dir = project["model_dir"]
    (model_dir / "inference_settings.json").write_text(json.dumps(
        {"screening_threshold": 0.99999, "discrimination_threshold": 0.99, "min_component_voxels": 50}))
    val = cv.validate_fold(project["name"], 1, project["pre"], project["res"], raw_root=project["raw"], overwrite=True)
    used = json.loads((val / "validation_settings.json").read_text())
    plans = json.loads((model_dir / "plans.json").read_text())["inference"]
    # screening keeps candidates down to the mining threshold (0.1), below the plans' 0.5, for the sweep
    assert used["screening_threshold"] == 0.1 < plans["screening_threshold"] == 0.5
    assert used["discrimination_threshold"] == plans["discrimination_threshold"]
    assert not used.get("min_component_voxels")
    cand = pd.concat(pd.read_csv(p) for p in val.glob("*_candidates.csv"))
    assert len(cand) > 0 and cand["screening_score"].max() < 0.99999  # the tuned threshold would leave none


def test_thresholds_are_chosen_automatically_once_every_fold_is_validated(project, capsys):
    model_dir = project["model_dir"]
    for fold in (0, 1):
        cv.validate_fold(project["name"], fold, project["pre"], project["res"], raw_root=project["raw"])
    settings = model_dir / "inference_settings.json"
    hand = {"screening_threshold": 0.3, "discrimination_threshold": 0.7}
    settings.write_text(json.dumps(hand))
    assert thresholds.thresholds_after_cross_validation(model_dir, 2) is None  # hand-set values are kept
    assert json.loads(settings.read_text()) == hand and "hand-set" in capsys.readouterr().out
    settings.unlink()
    assert thresholds.thresholds_after_cross_validation(model_dir, 3) is None  # fold 2 has no validation yet
    assert not settings.exists()
    result = thresholds.thresholds_after_cross_validation(model_dir, 2)
    chosen = json.loads(settings.read_text())
    assert result is not None and chosen == result["settings"] and "folds 0, 1" in chosen["selected_by"]
    assert "all 2 folds validated" in capsys.readouterr().out
    # an automatic choice is replaced by the next automatic one (it is not a hand-set value)
    assert thresholds.thresholds_after_cross_validation(model_dir, 2) is not None


def test_threshold_search_stops_at_the_screening_cap(project, capsys):
    """Thresholds chosen within the cohort must not raise screening past 0.5 unless asked (benchmarks.md 6g)."""
    model_dir = project["model_dir"]
    for fold in (0, 1):
        cv.validate_fold(project["name"], fold, project["pre"], project["res"], raw_root=project["raw"])
    dirs = {f: model_dir / f"fold_{f}" / "validation" for f in ("0", "1")}
    capped = thresholds.find_thresholds(model_dir, dirs)
    wide = thresholds.find_thresholds(model_dir, dirs, max_screening_threshold=0.95)
    low = 0.1  # the validation screened at the mining threshold; the plans predict at 0.5
    assert capped["sweep"]["screening_threshold"].min() == low < plans_default(model_dir) == 0.5
    assert capped["sweep"]["screening_threshold"].max() == thresholds.MAX_SEARCHED_SCREENING_THRESHOLD == 0.5
    assert capped["default"][0] == 0.5  # F1 "at the defaults" is read at the plans' screening threshold
    assert wide["sweep"]["screening_threshold"].max() == 0.95
    assert low <= capped["settings"]["screening_threshold"] <= 0.5
    np.testing.assert_array_equal(thresholds.screening_grid(0.7), [0.7])  # a validation above the cap: itself only
    args = ["-d", "42", "--results-root", str(project["res"]), "--dry-run"]
    assert thresholds.main([*args, "--max-screening-threshold", "0.3"]) == 0
    chosen = float(capsys.readouterr().out.split("chosen    screening >= ")[1].split(",")[0])
    assert low <= chosen <= 0.3
    assert thresholds.main([*args, "--max-screening-threshold", "1.5"]) == 2
    assert "--max-screening-threshold must lie between 0 and 1, got 1.5" in capsys.readouterr().err


def test_discrimination_threshold_from_the_share_of_cmbs_among_candidates(tmp_path, capsys):
    model_dir = tmp_path / "cmbunet"
    for fold, (fps, hits) in {"0": (40, 5), "1": (50, 5)}.items():
        folder = model_dir / f"fold_{fold}" / "screening"
        folder.mkdir(parents=True)
        cases = [{"case": f"c{i}", "cmbs": 6, "detected": hits // 5, "candidates": 0, "false_positives": fps // 5}
                 for i in range(5)]
        (folder / "validation_candidates.json").write_text(json.dumps({"cases": cases}))
    td, r = thresholds.candidate_prior_threshold(model_dir, ["0", "1"])
    assert r == pytest.approx(9.0) and td == pytest.approx(0.9)  # 90 FPs for 10 CMBs: odds 9 -> 0.9
    assert thresholds.candidate_prior_threshold(model_dir, ["7"]) is None
    assert thresholds.threshold_from_candidate_prior(model_dir, ["0", "1"]) == pytest.approx(0.9)
    written = json.loads((model_dir / "inference_settings.json").read_text())
    assert written["discrimination_threshold"] == pytest.approx(0.9) and "candidate prior" in written["selected_by"]
    assert "9.0 false positives per CMB" in capsys.readouterr().out
    # few candidates per CMB: never below the paper's 0.5; many: capped at 0.98
    (model_dir / "fold_0" / "screening" / "validation_candidates.json").write_text(json.dumps(
        {"cases": [{"detected": 10, "false_positives": 2}]}))
    assert thresholds.candidate_prior_threshold(model_dir, ["0"])[0] == 0.5
    (model_dir / "fold_1" / "screening" / "validation_candidates.json").write_text(json.dumps(
        {"cases": [{"detected": 1, "false_positives": 90}]}))
    assert thresholds.candidate_prior_threshold(model_dir, ["1"])[0] == 0.98
    # thresholds chosen on cross-validation, or set by hand, are not replaced
    (model_dir / "inference_settings.json").write_text(json.dumps({"discrimination_threshold": 0.6,
                                                                    "selected_by": "maximum pooled F1 over 9 cases"}))
    assert thresholds.threshold_from_candidate_prior(model_dir, ["0", "1"]) is None
    (model_dir / "inference_settings.json").write_text(json.dumps({"discrimination_threshold": 0.6}))
    assert thresholds.threshold_from_candidate_prior(model_dir, ["0", "1"]) is None
    assert json.loads((model_dir / "inference_settings.json").read_text()) == {"discrimination_threshold": 0.6}
