"""``cmbunet_evaluate`` on small folders of real NIfTI files, in both naming styles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cmbunet.errors import InputError
from cmbunet.evaluation.cli import main
from cmbunet.evaluation.evaluate import evaluate_folders
from cmbunet.imageio import SimpleITKIO
from cmbunet.utilities.file_io import load_json

SHAPE = (32, 32, 12)
SPACING = [0.5, 0.5, 3.0]  # voxel volume 0.75 mm^3
VOX = 0.75


def props(shape=SHAPE) -> dict:
    return {"spacing": SPACING, "origin": [-10.0, 5.0, 2.0], "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1],
            "shape": list(shape)}


def write(arr: np.ndarray, path: Path) -> None:
    SimpleITKIO.write(arr, path, props(arr.shape))


def reference_maps() -> dict[str, np.ndarray]:
    """sub-101: two CMBs; sub-102: one CMB; sub-103: none."""
    r1 = np.zeros(SHAPE, np.uint8)
    r1[5:7, 5:7, 3:5] = 1
    r1[20, 20, 8] = 1
    r2 = np.zeros(SHAPE, np.uint8)
    r2[10, 10, 6] = 1
    return {"sub-101": r1, "sub-102": r2, "sub-103": np.zeros(SHAPE, np.uint8)}


def prediction_maps() -> dict[str, np.ndarray]:
    """sub-101: first CMB found at p=0.9, second missed, one FP at 0.7, a 0.3 voxel below threshold;
    sub-103: one FP. sub-102 has no prediction file."""
    p1 = np.zeros(SHAPE, np.float32)
    p1[5:7, 5:7, 3:5] = 0.9
    p1[28, 5, 2] = 0.7
    p1[15, 25, 10] = 0.3
    p3 = np.zeros(SHAPE, np.float32)
    p3[3, 3, 3] = 1.0
    return {"sub-101": p1, "sub-103": p3}


@pytest.fixture
def valdo_folders(tmp_path: Path) -> tuple[Path, Path]:
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    for case, arr in reference_maps().items():
        write(arr, ref / case / f"{case}_space-T2S_CMB.nii.gz")
        write(np.zeros(SHAPE, np.float32), ref / case / f"{case}_space-T2S_desc-masked_T2S.nii.gz")
    preds = prediction_maps()
    write(preds["sub-101"], pred / "sub-101_space-T2S_prediction.nii.gz")  # flat
    write(preds["sub-103"], pred / "sub-103" / "sub-103_space-T2S_prediction.nii.gz")  # subject folder
    # files the evaluation must ignore
    write(np.ones(SHAPE, np.float32), pred / "sub-101_probabilities.nii.gz")
    (pred / "notes.csv").write_text("a,b\n1,2\n")
    return ref, pred


EXPECTED = {
    "sub-101": {"f1": 0.5, "dice": 1.0, "count_diff": 0, "vol_diff": abs(8 * 0.9 + 0.7 - 9) * VOX,
                "tp": 1, "fp": 1, "fn": 1, "n_ref": 2, "n_pred": 2, "missing": False},
    "sub-102": {"f1": 0.0, "dice": 0.0, "count_diff": 1, "vol_diff": VOX,
                "tp": 0, "fp": 0, "fn": 1, "n_ref": 1, "n_pred": 0, "missing": True},
    "sub-103": {"f1": None, "dice": None, "count_diff": 1, "vol_diff": VOX,
                "tp": 0, "fp": 1, "fn": 0, "n_ref": 0, "n_pred": 1, "missing": False},
}


def assert_case(got: dict, want: dict) -> None:
    for key, value in want.items():
        if value is None:
            assert got[key] is None, key
        elif isinstance(value, float):
            assert got[key] == pytest.approx(value, rel=1e-5), key
        else:
            assert got[key] == value, key


def test_cli_valdo_naming_writes_summary_and_csv(valdo_folders, capsys):
    ref, pred = valdo_folders
    assert main(["-ref", str(ref), "-pred", str(pred)]) == 0
    out = capsys.readouterr().out
    assert "NO PREDICTION" in out and "sub-102" in out
    assert "sensitivity 0.333" in out and "FP/case 0.67" in out
    assert str(pred / "evaluation" / "summary.json") in out

    summary = load_json(pred / "evaluation" / "summary.json")
    assert set(summary) == {"per_case", "aggregate", "dist_mm", "missing_predictions"}
    assert summary["dist_mm"] == 5.0
    assert summary["missing_predictions"] == ["sub-102"]
    assert sorted(summary["per_case"]) == ["sub-101", "sub-102", "sub-103"]
    for case, want in EXPECTED.items():
        assert_case(summary["per_case"][case], want)
    agg = summary["aggregate"]
    assert (agg["num_cases"], agg["num_cases_with_cmb"], agg["num_missing_predictions"]) == (3, 2, 1)
    assert (agg["tp"], agg["fp"], agg["fn"]) == (1, 2, 2)
    assert agg["sensitivity"] == pytest.approx(1 / 3)
    assert agg["precision"] == pytest.approx(1 / 3)
    assert agg["f1_pooled"] == pytest.approx(1 / 3)
    assert agg["fp_per_case"] == pytest.approx(2 / 3)
    # F1 and Dice over the two cases with CMBs; differences over all three
    assert (agg["f1_median"], agg["f1_mean"]) == (pytest.approx(0.25), pytest.approx(0.25))
    assert (agg["dice_median"], agg["dice_mean"]) == (pytest.approx(0.5), pytest.approx(0.5))
    assert (agg["count_diff_median"], agg["count_diff_mean"]) == (pytest.approx(1.0), pytest.approx(2 / 3))
    assert agg["vol_diff_median"] == pytest.approx(VOX)
    assert agg["vol_diff_mean"] == pytest.approx((1.1 * VOX + 2 * VOX) / 3, rel=1e-5)

    table = pd.read_csv(pred / "evaluation" / "metrics_per_case.csv")
    assert table["case"].tolist() == ["sub-101", "sub-102", "sub-103"]
    assert table["tp"].tolist() == [1, 0, 0] and table["fp"].tolist() == [1, 0, 1]
    assert table["missing"].tolist() == [False, True, False]
    assert np.isnan(table.loc[2, "f1"]) and np.isnan(table.loc[2, "dice"])
    assert table.loc[0, "prediction"].endswith("sub-101_space-T2S_prediction.nii.gz")


def test_cli_labelstr_naming_custom_output_and_processes(tmp_path, capsys):
    labels, pred, out = tmp_path / "labelsTr", tmp_path / "pred", tmp_path / "report"
    for case, arr in reference_maps().items():
        write(arr, labels / f"{case}.nii.gz")
    for case, arr in prediction_maps().items():
        write(arr, pred / f"{case}.nii.gz")
        write(np.ones(SHAPE, np.float32), pred / f"{case}_probabilities.nii.gz")
    assert main(["-ref", str(labels), "-pred", str(pred), "-o", str(out), "-np", "2", "--dist", "5"]) == 0
    summary = load_json(out / "summary.json")
    for case, want in EXPECTED.items():
        assert_case(summary["per_case"][case], want)
    assert not (pred / "evaluation").exists()
    # the raw dataset folder (holding labelsTr/) is accepted as the reference too
    per_case, agg = evaluate_folders(tmp_path, pred)
    assert per_case["tp"].tolist() == [1, 0, 0] and agg["num_missing_predictions"] == 1


def test_distance_option_changes_the_result(tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    r = np.zeros(SHAPE, np.uint8)
    r[10, 10, 5] = 1
    p = np.zeros(SHAPE, np.float32)
    p[10, 10, 6] = 1.0  # one slice away: 3 mm
    write(r, ref / "case1.nii.gz")
    write(p, pred / "case1.nii.gz")
    assert main(["-ref", str(ref), "-pred", str(pred), "--dist", "2.5"]) == 0
    assert load_json(pred / "evaluation" / "summary.json")["per_case"]["case1"]["tp"] == 0
    assert main(["-ref", str(ref), "-pred", str(pred), "--dist", "3.5"]) == 0
    summary = load_json(pred / "evaluation" / "summary.json")
    assert summary["per_case"]["case1"]["tp"] == 1 and summary["dist_mm"] == 3.5


def test_missing_folders_are_clear_errors(valdo_folders, tmp_path, capsys):
    ref, pred = valdo_folders
    assert main(["-ref", str(tmp_path / "nope"), "-pred", str(pred)]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "reference folder does not exist" in err
    assert main(["-ref", str(ref), "-pred", str(tmp_path / "gone")]) == 2
    assert "prediction folder does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["-ref", str(ref), "-pred", str(empty)]) == 2
    assert "no prediction matches any of the 3 reference cases" in capsys.readouterr().err
    assert not (pred / "evaluation").exists()


def test_shape_mismatch_names_both_files(valdo_folders, capsys):
    ref, pred = valdo_folders
    bad = pred / "sub-101_space-T2S_prediction.nii.gz"
    write(np.zeros((32, 32, 11), np.float32), bad)
    assert main(["-ref", str(ref), "-pred", str(pred)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "sub-101_space-T2S_CMB.nii.gz" in err and "(32, 32, 11)" in err
    assert not (pred / "evaluation" / "summary.json").exists()
    with pytest.raises(InputError, match="differs from the reference"):
        evaluate_folders(ref, pred, num_processes=2)


def test_two_predictions_for_one_case_are_ambiguous(valdo_folders):
    ref, pred = valdo_folders
    write(np.zeros(SHAPE, np.float32), pred / "sub-101.nii.gz")
    with pytest.raises(InputError, match="2 prediction files"):
        evaluate_folders(ref, pred)
