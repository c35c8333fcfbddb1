"""``cmbunet_evaluate`` and ``cmbunet_report`` read every layout ``cmbunet_predict`` writes: flat, a folder per
case, and BIDS derivatives with sessions. The same scans predicted into each layout give the same metrics."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from cmbunet.evaluation.cli import main as evaluate_main
from cmbunet.inference.cli import main as predict_main
from cmbunet.inference.layouts import bids_mask_case, find_predictions
from cmbunet.report.cli import main as report_main
from cmbunet.synthetic.writer import write_dataset
from test_predict_cli import write_model


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Two synthetic subjects as a VALDO tree (images and reference labels), the same scans as a BIDS dataset
    (sub-102 in session ses-1) and their labels as a BIDS derivative of reference masks."""
    root = tmp_path_factory.mktemp("layouts")
    valdo = write_dataset(root / "valdo", 2, layout="valdo", seed=0)
    bids, ref = root / "bids", root / "bids_ref"
    for sub, folder, case in (("sub-101", "sub-101/anat", "sub-101"), ("sub-102", "sub-102/ses-1/anat", "sub-102_ses-1")):
        (bids / folder).mkdir(parents=True)
        (ref / folder).mkdir(parents=True)
        shutil.copy(valdo / sub / f"{sub}_space-T2S_desc-masked_T2S.nii.gz", bids / folder / f"{case}_T2starw.nii.gz")
        shutil.copy(valdo / sub / f"{sub}_space-T2S_CMB.nii.gz", ref / folder / f"{case}_desc-manual_mask.nii.gz")
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "synthetic", "BIDSVersion": "1.10.0"}))
    model = write_model(root / "results" / "Dataset001_Synth" / "cmbunet", ("T2S",))
    flat, bids_out = root / "flat", root / "derivatives" / "cmbunet"
    assert predict_main(["-i", str(valdo), "-o", str(flat), "-m", str(model), "-npp", "0"]) == 0
    assert predict_main(["-i", str(bids), "-o", str(bids_out), "-m", str(model), "-npp", "0",
                         "--output-format", "bids"]) == 0
    per_case = root / "per_case"
    for sub in ("sub-101", "sub-102"):
        (per_case / sub).mkdir(parents=True)
        for name in (f"{sub}_space-T2S_prediction.nii.gz", f"{sub}_cmbs.csv"):
            shutil.copy(flat / name, per_case / sub / name)
    return {"valdo": valdo, "bids": bids, "ref": ref, "flat": flat, "bids_out": bids_out, "per_case": per_case}


def evaluate(ref: Path, pred: Path, out: Path) -> pd.DataFrame:
    assert evaluate_main(["-ref", str(ref), "-pred", str(pred), "-o", str(out)]) == 0
    return pd.read_csv(out / "metrics_per_case.csv")


def test_every_layout_is_found_with_its_table(data):
    flat, per_case, bids = (find_predictions(data[k]) for k in ("flat", "per_case", "bids_out"))
    assert sorted(flat) == sorted(per_case) == ["sub-101", "sub-102"] and sorted(bids) == ["sub-101", "sub-102_ses-1"]
    assert {f.layout for f in flat.values()} == {"flat"} and {f.layout for f in per_case.values()} == {"case folder"}
    session = bids["sub-102_ses-1"]
    assert session.layout == "BIDS" and session.mask.name == "sub-102_ses-1_desc-cmb_mask.nii.gz"
    assert session.table.name == "sub-102_ses-1_desc-cmb_cmbs.tsv"
    assert flat["sub-101"].table.name == "sub-101_cmbs.csv"


def test_bids_mask_names():
    assert bids_mask_case(Path("sub-1_ses-2_desc-cmb_mask.nii.gz")) == "sub-1_ses-2"
    assert bids_mask_case(Path("sub-1_desc-maskedcmb_mask.nii.gz")) == "sub-1_desc-masked"
    assert bids_mask_case(Path("sub-1_desc-brain_mask.nii.gz")) is None  # not a prediction
    assert bids_mask_case(Path("sub-1_desc-brain_mask.nii.gz"), desc_of_prediction=False) == "sub-1"
    assert bids_mask_case(Path("sub-1_desc-cmb_probseg.nii.gz")) is None


def test_evaluate_gives_the_same_metrics_in_every_layout(data, tmp_path):
    flat = evaluate(data["valdo"], data["flat"], tmp_path / "flat")
    per_case = evaluate(data["valdo"], data["per_case"], tmp_path / "per_case")
    bids = evaluate(data["ref"], data["bids_out"], tmp_path / "bids")
    assert not flat["missing"].any() and not per_case["missing"].any() and not bids["missing"].any()
    assert bids["case"].tolist() == ["sub-101", "sub-102_ses-1"]
    assert bids["prediction"].str.endswith("_desc-cmb_mask.nii.gz").all()
    metrics = ["f1", "dice", "count_diff", "vol_diff", "tp", "fp", "fn", "n_ref", "n_pred"]
    for other in (per_case, bids):
        pd.testing.assert_frame_equal(flat[metrics], other[metrics])
    assert (flat["n_pred"] > 0).all()
    # the default output folder lies inside the derivative, beside sub-*/ (which is not mistaken for a case)
    assert evaluate_main(["-ref", str(data["ref"]), "-pred", str(data["bids_out"])]) == 0
    assert evaluate_main(["-ref", str(data["ref"]), "-pred", str(data["bids_out"]), "-o",
                          str(tmp_path / "again")]) == 0


def test_report_draws_bids_outputs_with_their_tables(data, tmp_path):
    out = tmp_path / "report"
    assert report_main(["-i", str(data["bids_out"]), "-img", str(data["bids"]), "-ref", str(data["ref"]),
                        "-o", str(out)]) == 0
    html = (out / "index.html").read_text()
    assert "no prediction file" not in html and "not found" not in html and "no T2* image" not in html
    summary = pd.read_csv(data["bids_out"] / "summary.csv").set_index("case")
    counts = dict(re.findall(r'<tr[^>]*id="case-([^"]+)"><td>[^<]*</td><td class="num cmb-count">([^<]*)</td>', html))
    assert counts == {c: str(int(summary.loc[c, "num_cmbs"])) for c in ("sub-101", "sub-102_ses-1")}
    assert sorted(p.name for p in (out / "cases").glob("*_sheet1.png")) == ["sub-101_sheet1.png",
                                                                           "sub-102_ses-1_sheet1.png"]
