"""``prediction_record.json``: a re-run continues a folder only with the model and settings that wrote it; the
default folds; the thresholds, folds and precision every run prints and records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cmbunet.inference.cli import main
from cmbunet.inference.predictor import CMBPredictor, default_folds
from cmbunet.inference.record import RECORD_FILE, record_differences
from cmbunet.synthetic.writer import write_dataset
from cmbunet.utilities.file_io import file_sha256
from test_predict_cli import predicted_rows, write_model


@pytest.fixture(scope="module")
def one_subject(tmp_path_factory) -> Path:
    """One synthetic VALDO subject (a folder of its own, so each run predicts one case)."""
    return write_dataset(tmp_path_factory.mktemp("data") / "valdo", 1, layout="valdo", seed=3) / "sub-101"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """Numbered folds 0 and 1 and the fold trained on all cases."""
    return write_model(tmp_path_factory.mktemp("results") / "Dataset001_Synth" / "cmbunet", ("T2S",),
                       folds=("0", "1", "all"))


def predict(inp: Path, out: Path, model: Path, *extra: str) -> int:
    return main(["-i", str(inp), "-o", str(out), "-m", str(model), "-npp", "0", *extra])


def test_record_names_model_and_settings_and_a_changed_setting_stops_the_rerun(one_subject, model, tmp_path, capsys):
    out = tmp_path / "pred"
    assert predict(one_subject, out, model, "--discrimination-threshold", "0.0") == 0
    printed = capsys.readouterr().out
    assert "thresholds: screening 0 (inference_settings.json), discrimination 0 (command line), " \
           "round spots 0.5 (plans), CSF share 0.6 (plans), blob ratio off (inference_settings.json), " \
           "in-plane elongation off (inference_settings.json), segmentation 0.5 (plans)" in printed
    assert "device: cpu (auto: no CUDA GPU is visible)" in printed or "device: cuda (auto: " in printed
    assert "folds: 0 1 (default: every numbered fold with all three stages trained; fold(s) all left out" in printed
    record = json.loads((out / RECORD_FILE).read_text())
    assert record["model"]["folds"] == ["0", "1"] and record["model"]["checkpoint"] == "final"
    sums = record["model"]["checkpoints"]
    assert len(sums) == 6 and sums["fold_1/segmentation/checkpoint_final.pth"] == \
        file_sha256(model / "fold_1/segmentation/checkpoint_final.pth")
    assert record["settings"]["inference"]["discrimination_threshold"] == 0.0
    assert record["settings"]["mode"] == "fcn" and record["settings"]["precision"]["discrimination"] == "fp32"
    assert record["settings"]["inference"]["discrimination_mirror"] in (True, False)
    assert record["about"]["setting_sources"]["discrimination_threshold"] == "command line"
    assert record["about"]["device"] in ("cpu", "cuda")
    mask = out / "sub-101_space-T2S_prediction.nii.gz"
    stamp = mask.stat().st_mtime_ns

    # the same settings: the finished case is skipped, the record kept as it was
    before = (out / RECORD_FILE).read_text()
    assert predict(one_subject, out, model, "--discrimination-threshold", "0") == 0
    assert predicted_rows(out / "summary.csv")["status"].str.startswith("skipped").all()
    assert (out / RECORD_FILE).read_text() == before

    # another threshold: stops before anything is written, naming the change and --overwrite
    capsys.readouterr()
    assert predict(one_subject, out, model, "--discrimination-threshold", "0.999") == 2
    err = capsys.readouterr().err
    assert "settings.inference.discrimination_threshold: 0.0 -> 0.999" in err and "--overwrite" in err
    assert mask.stat().st_mtime_ns == stamp and (out / RECORD_FILE).read_text() == before

    # other folds are another model
    assert predict(one_subject, out, model, "-f", "all", "--discrimination-threshold", "0") == 2
    err = capsys.readouterr().err
    assert 'model.folds: ["0", "1"] -> ["all"]' in err and "model.checkpoints.fold_all/screening" in err

    # --overwrite predicts the case again and records the new settings
    assert predict(one_subject, out, model, "--discrimination-threshold", "0.999", "--overwrite") == 0
    assert (predicted_rows(out / "summary.csv")["status"] == "ok").all() and mask.stat().st_mtime_ns != stamp
    assert json.loads((out / RECORD_FILE).read_text())["settings"]["inference"]["discrimination_threshold"] == 0.999


def test_outputs_without_a_record_are_not_continued(one_subject, model, tmp_path, capsys):
    out = tmp_path / "pred"
    assert predict(one_subject, out, model, "-f", "0") == 0
    (out / RECORD_FILE).unlink()  # as an older version left the folder
    capsys.readouterr()
    assert predict(one_subject, out, model, "-f", "0") == 2
    err = capsys.readouterr().err
    assert f"holds predictions but no {RECORD_FILE}" in err and "--overwrite" in err
    assert predict(one_subject, out, model, "-f", "0", "--overwrite") == 0
    assert (out / RECORD_FILE).is_file()


def test_default_folds_are_the_numbered_ones_else_all(model, tmp_path):
    assert default_folds(["0", "1", "all"])[0] == ["0", "1"]
    assert default_folds(["all"])[0] == ["all"]
    assert CMBPredictor.from_model_folder(model).folds == ["0", "1"]
    assert CMBPredictor.from_model_folder(model, folds=["0", "all"]).folds == ["0", "all"]  # both when asked
    only_all = tmp_path / "model"
    shutil.copytree(model, only_all, ignore=shutil.ignore_patterns("fold_0", "fold_1"))
    predictor = CMBPredictor.from_model_folder(only_all)
    assert predictor.folds == ["all"] and "no numbered fold" in predictor.folds_line()


def test_record_differences_name_every_changed_value():
    old = {"model": {"folds": ["0"]}, "settings": {"inference": {"a": 1, "b": [1, 2]}}, "about": {"device": "cpu"}}
    new = {"model": {"folds": ["0"]}, "settings": {"inference": {"a": 2, "b": [1, 2], "c": None}},
           "about": {"device": "cuda"}}
    assert record_differences(old, new) == ["settings.inference.a: 1 -> 2", 'settings.inference.c: "absent" -> null']
    assert record_differences(old, json.loads(json.dumps(old))) == []

