"""``cmbunet_predict`` end to end on synthetic VALDO-style data with tiny models: outputs, CSV columns, resume,
sharding and per-case error reporting."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from cmbunet.inference.cli import main
from cmbunet.inference.predictor import CMB_COLUMNS
from cmbunet.networks import build_network
from cmbunet.plans import STAGES
from cmbunet.plans.plans_io import plans_hash, save_plans
from cmbunet.synthetic.writer import write_dataset
from cmbunet.utilities.file_io import save_json
from plan_helpers import make_plans

SUMMARY_COLUMNS = {"case", "status", "error", "num_cmbs", "total_volume_mm3", "num_candidates", "num_kept",
                   "seconds_screening", "seconds_discrimination", "seconds_segmentation", "seconds_total"}


def write_model(model_dir: Path, channels: tuple[str, ...], folds=("0",)) -> Path:
    """Tiny random networks saved as training checkpoints. The last biases of discrimination and segmentation
    favour 'CMB' so that every run has kept candidates and a non-empty map to check; at most 4 candidates per
    case (inference_settings.json) keeps the test fast."""
    plans = make_plans(channels)
    save_plans(plans, model_dir / "plans.json")
    save_json({"channel_names": plans.channel_names, "file_ending": ".nii.gz"}, model_dir / "dataset.json")
    save_json({"max_candidates": 4, "screening_threshold": 0.0, "shape_max_elongation": None, "shape_max_diameter_mm": None,
               "shape_min_blob_ratio": None, "shape_max_inplane_elongation": None},
              model_dir / "inference_settings.json")
    last_bias = {"screening": None, "discrimination": "classifier.4.bias", "segmentation": "output.bias"}
    for f_i, fold in enumerate(folds):
        for s_i, stage in enumerate(STAGES):
            torch.manual_seed(10 * f_i + s_i)
            weights = build_network(stage, plans).state_dict()
            if last_bias[stage]:
                weights[last_bias[stage]] = torch.tensor([0.0, 4.0])
            (model_dir / f"fold_{fold}" / stage).mkdir(parents=True, exist_ok=True)
            torch.save({"stage": stage, "epoch": 0, "weights": weights, "plans_hash": plans_hash(plans)},
                       model_dir / f"fold_{fold}" / stage / "checkpoint_final.pth")
    return model_dir


@pytest.fixture(scope="module")
def valdo(tmp_path_factory) -> Path:
    """Three synthetic subjects in the VALDO layout (oblique, anisotropic, some with NaNs outside the brain)."""
    return write_dataset(tmp_path_factory.mktemp("data") / "valdo", 3, layout="valdo", seed=0)


@pytest.fixture(scope="module")
def results_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("results")
    write_model(root / "Dataset001_Synth" / "cmbunet", ("T2S",))
    return root


@pytest.fixture(scope="module")
def first_run(valdo, results_root, tmp_path_factory) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("pred")
    code = main(["-i", str(valdo), "-o", str(out), "-d", "1", "--results-root", str(results_root),
                 "--save_probabilities", "-npp", "1"])
    return out, code


def predicted_rows(summary_csv: Path) -> pd.DataFrame:
    """summary.csv without the rows of input entries that are not images (listed as ``ignored``)."""
    summary = pd.read_csv(summary_csv)
    return summary[summary["status"] != "ignored"].reset_index(drop=True)


def test_end_to_end_outputs(valdo, first_run):
    out, code = first_run
    assert code == 0
    subjects = ["sub-101", "sub-102", "sub-103"]
    summary = pd.read_csv(out / "summary.csv")
    assert SUMMARY_COLUMNS <= set(summary.columns)
    # every entry of the input is accounted for: the ground-truth file beside the subjects is listed as ignored
    assert summary.loc[summary["status"] == "ignored", "case"].tolist() == ["synthetic_truth.json"]
    summary = summary[summary["status"] != "ignored"]
    assert summary["case"].tolist() == subjects and (summary["status"] == "ok").all()
    assert (summary["seconds_screening"] > 0).all() and (summary["num_candidates"] <= 4).all()
    for sub in subjects:
        src = sitk.ReadImage(str(valdo / sub / f"{sub}_space-T2S_desc-masked_T2S.nii.gz"))
        pred_img = sitk.ReadImage(str(out / f"{sub}_space-T2S_prediction.nii.gz"))
        prob_img = sitk.ReadImage(str(out / f"{sub}_probabilities.nii.gz"))
        for img in (pred_img, prob_img):
            assert img.GetSize() == src.GetSize()
            np.testing.assert_allclose(img.GetSpacing(), src.GetSpacing(), atol=1e-6)
            np.testing.assert_allclose(img.GetOrigin(), src.GetOrigin(), atol=1e-5)
            np.testing.assert_allclose(img.GetDirection(), src.GetDirection(), atol=1e-6)
        pred = sitk.GetArrayFromImage(pred_img).transpose(2, 1, 0)
        prob = sitk.GetArrayFromImage(prob_img).transpose(2, 1, 0)
        assert set(np.unique(pred)) <= {0, 1} and pred.sum() > 0
        assert 0.0 <= prob.min() and prob.max() <= 1.0
        np.testing.assert_array_equal(pred, prob >= 0.5)
        cmbs = pd.read_csv(out / f"{sub}_cmbs.csv")
        assert list(cmbs.columns) == CMB_COLUMNS
        labels, n = ndimage.label(pred, structure=np.ones((3, 3, 3)))
        assert len(cmbs) == n >= 1
        voxel_mm3 = float(np.prod(src.GetSpacing()))
        assert cmbs["volume_mm3"].sum() == pytest.approx(pred.sum() * voxel_mm3, rel=1e-4)
        # world = origin + D (index * spacing), index the centre of mass (i, j, k are it rounded)
        world = np.array([src.TransformContinuousIndexToPhysicalPoint([float(a), float(b), float(c)])
                          for a, b, c in cmbs[["i", "j", "k"]].to_numpy()])
        assert np.abs(world - cmbs[["x_mm", "y_mm", "z_mm"]].to_numpy()).max() < 0.5 * max(src.GetSpacing()) * 3 ** 0.5 + 1e-6
        assert cmbs[["screening_score", "discrimination_score", "segmentation_score"]].stack().between(0, 1).all()
        row = summary[summary["case"] == sub].iloc[0]
        assert row["num_cmbs"] == len(cmbs)


def test_rerun_skips_finished_cases_and_overwrite_redoes_them(valdo, results_root, first_run):
    out, _ = first_run
    target = out / "sub-102_space-T2S_prediction.nii.gz"
    before = target.stat().st_mtime_ns
    assert main(["-i", str(valdo), "-o", str(out), "-d", "1", "--results-root", str(results_root),
                 "--save_probabilities"]) == 0
    summary = predicted_rows(out / "summary.csv")
    assert summary["status"].str.startswith("skipped").all() and target.stat().st_mtime_ns == before
    assert summary["num_cmbs"].notna().all() and summary["seconds_total"].notna().all()  # earlier results kept
    (out / "sub-103_cmbs.csv").unlink()  # an unfinished case is redone
    assert main(["-i", str(valdo), "-o", str(out), "-d", "Dataset001_Synth", "--results-root", str(results_root),
                 "--save_probabilities"]) == 0
    summary = pd.read_csv(out / "summary.csv").set_index("case")
    assert summary.loc["sub-103", "status"] == "ok" and summary.loc["sub-101", "status"].startswith("skipped")
    assert (out / "sub-103_cmbs.csv").is_file()
    assert main(["-i", str(valdo / "sub-102"), "-o", str(out), "-d", "1", "--results-root", str(results_root),
                 "--overwrite"]) == 0
    assert target.stat().st_mtime_ns != before


def test_sharding_predicts_each_case_exactly_once(valdo, results_root, tmp_path):
    seen = []
    for part in (0, 1):
        code = main(["-i", str(valdo), "-o", str(tmp_path), "-d", "1", "--results-root", str(results_root),
                     "-num_parts", "2", "-part_id", str(part), "-npp", "0"])
        assert code == 0
        summary = predicted_rows(tmp_path / f"summary_part{part}of2.csv")
        assert (summary["status"] == "ok").all()
        seen += summary["case"].tolist()
    assert sorted(seen) == ["sub-101", "sub-102", "sub-103"]
    assert len(list(tmp_path.glob("*_prediction.nii.gz"))) == 3


def test_broken_cases_are_reported_and_others_succeed(valdo, tmp_path, capsys):
    model = write_model(tmp_path / "model", ("T2S", "T1"))
    tree = tmp_path / "in"
    shutil.copytree(valdo, tree)
    (tree / "sub-102" / "sub-102_space-T2S_desc-masked_T1.nii.gz").unlink()  # missing channel
    shutil.copy(tree / "sub-101" / "sub-101_space-T2S_desc-masked_T1.nii.gz",  # T1 of another geometry
                tree / "sub-103" / "sub-103_space-T2S_desc-masked_T1.nii.gz")
    shutil.copytree(tree / "sub-101", tree / "sub-104")
    for f in (tree / "sub-104").iterdir():
        f.rename(f.with_name(f.name.replace("sub-101", "sub-104")))
    (tree / "sub-104" / "sub-104_space-T2S_desc-masked_T2S.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    out = tmp_path / "out"
    code = main(["-i", str(tree), "-o", str(out), "-m", str(model)])
    assert code == 1
    summary = predicted_rows(out / "summary.csv").set_index("case")
    assert summary["status"].to_dict() == {"sub-101": "ok", "sub-102": "failed", "sub-103": "failed", "sub-104": "failed"}
    assert "sub-102_space-T2S_desc-masked_T1.nii.gz" in summary.loc["sub-102", "error"]
    assert "sub-103_space-T2S_desc-masked_T1.nii.gz" in summary.loc["sub-103", "error"]
    assert "geometry does not match" in summary.loc["sub-103", "error"]
    assert "sub-104_space-T2S_desc-masked_T2S.nii.gz" in summary.loc["sub-104", "error"]
    assert (out / "sub-101_space-T2S_prediction.nii.gz").is_file()
    assert not list(out.glob("sub-10[234]_*"))
    assert "3 failed" in capsys.readouterr().out


def test_model_folder_problems_are_clear_errors(valdo, tmp_path, capsys):
    assert main(["-i", str(valdo), "-o", str(tmp_path / "o"), "-m", str(tmp_path / "nope")]) == 2
    assert "model folder does not exist" in capsys.readouterr().err
    model = write_model(tmp_path / "model", ("T2S",), folds=("0", "1"))
    (model / "fold_1" / "segmentation" / "checkpoint_final.pth").unlink()
    assert main(["-i", str(valdo), "-o", str(tmp_path / "o"), "-m", str(model), "-f", "1"]) == 2
    assert "fold_1/segmentation/checkpoint_final.pth" in capsys.readouterr().err
    # by default only complete folds are used
    from cmbunet.inference.predictor import CMBPredictor

    assert CMBPredictor.from_model_folder(model).folds == ["0"]


def test_cpu_bf16_flags_are_read_from_cpuinfo(tmp_path):
    from cmbunet.inference.cli import cpu_has_bf16

    plain, amx = tmp_path / "plain", tmp_path / "amx"
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n")
    amx.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16\n")
    assert cpu_has_bf16(plain) is False and cpu_has_bf16(amx) is True
    assert cpu_has_bf16(tmp_path / "missing") is None


def test_cpu_bf16_without_bf16_instructions_warns(valdo, results_root, tmp_path, capsys, monkeypatch):
    import cmbunet.inference.cli as cli

    monkeypatch.setattr(cli, "cpu_has_bf16", lambda: False)
    code = main(["-i", str(valdo / "sub-101"), "-o", str(tmp_path), "-d", "1", "--results-root", str(results_root),
                 "-npp", "0", "--cpu-bf16"])
    assert code == 0 and "without bfloat16 instructions" in capsys.readouterr().err
    assert len(list(tmp_path.glob("*_prediction.nii.gz"))) == 1


def test_precision_option_prints_the_path_that_ran(valdo, results_root, tmp_path, capsys):
    args = ["-i", str(valdo / "sub-101"), "-d", "1", "--results-root", str(results_root), "-npp", "0"]
    assert main([*args, "-o", str(tmp_path / "fp32"), "--precision", "fp32", "--no-skip-empty"]) == 0
    out = capsys.readouterr().out
    assert "precision: fp32 on cpu (float32 requested)" in out and "skips empty tiles: no" in out
    assert main([*args, "-o", str(tmp_path / "auto")]) == 0
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("precision: "))
    assert line.startswith(("precision: bf16 on cpu (auto: the CPU has", "precision: fp32 on cpu (auto:"))
    name = "sub-101_space-T2S_prediction.nii.gz"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "auto" / name))),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "fp32" / name))))
    assert main([*args, "-o", str(tmp_path / "x"), "--precision", "fp32", "--cpu-bf16"]) == 2
    assert "contradicts" in capsys.readouterr().err


def test_shape_rule_options_reach_the_settings_and_are_checked(valdo, results_root, tmp_path, capsys):
    """--shape-max-* override the model's settings (checked like every setting); with the rule a case keeps at
    most the candidates it keeps without it."""
    def args(out: str) -> list[str]:
        return ["-i", str(valdo), "-o", str(tmp_path / out), "-d", "1", "--results-root", str(results_root), "-npp", "0"]

    assert main(args("bad") + ["--shape-max-elongation", "0.5"]) != 0
    assert "shape_max_elongation = 0.5" in capsys.readouterr().err
    kept = {}
    for name, extra in (("off", []), ("on", ["--shape-max-elongation", "1.5", "--shape-max-diameter-mm", "3"])):
        assert main(args(name) + extra) == 0
        kept[name] = predicted_rows(tmp_path / name / "summary.csv")["num_kept"].to_numpy()
    assert (kept["on"] <= kept["off"]).all() and kept["on"].sum() < kept["off"].sum()


def test_save_candidates_writes_every_candidate_with_its_decision(valdo, results_root, tmp_path):
    """--save-candidates: one table per case, as many rows as screening candidates, as many kept as the summary
    says, with the spot measures of the shape rule; a later run asked for them redoes a case that lacks them."""
    out = tmp_path / "out"
    args = ["-i", str(valdo), "-o", str(out), "-d", "1", "--results-root", str(results_root), "-npp", "0"]
    assert main(args) == 0
    assert not list(out.glob("*_candidates.csv"))
    assert main(args + ["--save-candidates"]) == 0
    summary = predicted_rows(out / "summary.csv")
    assert (summary["status"] == "ok").all()  # redone, not skipped: the candidates were missing
    for row in summary.itertuples():
        table = pd.read_csv(out / f"{row.case}_candidates.csv")
        assert len(table) == row.num_candidates and int(table["kept"].sum()) == row.num_kept
        assert {"screening_score", "discrimination_score", "spot_elongation", "spot_diameter_mm",
                "x_mm", "y_mm", "z_mm"} <= set(table.columns)
