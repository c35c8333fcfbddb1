"""Bad input across the commands: every kind is answered by a clear message naming the file and the problem,
a non-zero exit code, and no new, partial or modified file (inputs are hashed before and after, output folders
are listed before and after).

The commands run in-process through their ``main(argv)``; a few run through the real console scripts.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from cmbunet.dataset.convert_valdo import main as convert_main
from cmbunet.evaluation.cli import main as evaluate_main
from cmbunet.inference.cli import main as predict_main
from cmbunet.networks import build_network
from cmbunet.plan_and_preprocess import main as plan_main
from cmbunet.plans import STAGES, Plans, apply_overrides
from cmbunet.plans.plans_io import load_plans, plans_hash, save_plans
from cmbunet.synthetic.cli import main as synthetic_main
from cmbunet.synthetic.writer import write_dataset
from cmbunet.training.checkpoint import load_checkpoint
from cmbunet.training.cli import main as train_main
from cmbunet.errors import InputError, PlansMismatchError
from cmbunet.utilities.file_io import save_json

BASE = "Dataset801_Base"
BIN = Path(sys.executable).parent


# ---------------------------------------------------------------------------------------------------- helpers
def tree_state(*folders: Path) -> dict[str, str]:
    """Every file below ``folders`` (hidden and temporary ones included) -> sha256 of its bytes."""
    state = {}
    for folder in folders:
        if folder.exists():
            for p in sorted(folder.rglob("*")):
                if p.is_file():
                    state[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return state


def read(path: Path) -> sitk.Image:
    return sitk.ReadImage(str(path))


def write(img: sitk.Image, path: Path) -> None:
    sitk.WriteImage(img, str(path), True)


def like(ref: sitk.Image, arr: np.ndarray) -> sitk.Image:
    """An image with ``ref``'s geometry and the (z, y, x) array ``arr``."""
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(ref)
    return img


def run_and_check(capsys, main: Callable, argv: list[str], inputs: list[Path], outputs: list[Path],
                  expect: list[str], code: int = 2) -> str:
    """Run a CLI in-process; check its exit code, that stderr names the file and problem, that the inputs are
    byte-identical and that the output folders gained or lost no file. Returns stderr."""
    before_in, before_out = tree_state(*inputs), tree_state(*outputs)
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == code, err
    for text in expect:
        assert text in err, f"{text!r} not in stderr:\n{err}"
    assert "Traceback" not in err
    assert tree_state(*inputs) == before_in, "an input file was modified"
    assert tree_state(*outputs) == before_out, "an output folder gained, lost or changed a file"
    return err


def unwritable_folder(base: Path) -> Path:
    """An output path that cannot be created: a chmod 0o500 folder, or, where chmod does not stop writes (root),
    a path whose parent is a regular file."""
    locked = base / "locked"
    locked.mkdir(parents=True, exist_ok=True)
    locked.chmod(0o500)
    probe = locked / "probe"
    try:
        probe.mkdir()
    except PermissionError:
        return locked / "out"
    probe.rmdir()  # running as root: chmod does not stop writes
    locked.chmod(0o700)
    blocker = base / "a_regular_file"
    blocker.write_text("not a folder")
    return blocker / "out"


def write_fake_model(model_dir: Path, plans: Plans, folds=("0",), checkpoint_plans: Plans | None = None) -> Path:
    """Random networks saved as training checkpoints (training is not what these tests are about)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    save_plans(plans, model_dir / "plans.json")
    save_json({"channel_names": plans.channel_names, "file_ending": ".nii.gz"}, model_dir / "dataset.json")
    save_json({"max_candidates": 4, "screening_threshold": 0.0, "shape_max_elongation": None, "shape_max_diameter_mm": None,
               "shape_min_blob_ratio": None, "shape_max_inplane_elongation": None},
              model_dir / "inference_settings.json")
    ck_plans = plans if checkpoint_plans is None else checkpoint_plans
    for fold in folds:
        for i, stage in enumerate(STAGES):
            torch.manual_seed(i)
            folder = model_dir / f"fold_{fold}" / stage
            folder.mkdir(parents=True, exist_ok=True)
            torch.save({"stage": stage, "epoch": 0, "weights": build_network(stage, ck_plans).state_dict(),
                        "plans_hash": plans_hash(ck_plans)}, folder / "checkpoint_final.pth")
    return model_dir


# ---------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    """A small raw dataset (3 training + 3 test cases), preprocessed, and a random-weight model of its plans."""
    base = tmp_path_factory.mktemp("bad_input")
    raw, pre, res = base / "raw", base / "pre", base / "res"
    write_dataset(raw / BASE, 3, seed=11, size="small", num_test_cases=3)
    assert plan_main(["-d", BASE, "--preset", "tiny", "--raw-root", str(raw), "--preprocessed-root", str(pre),
                      "-np", "1"]) == 0
    plans = load_plans(pre / BASE / "plans.json")
    write_fake_model(res / BASE / "cmbunet", plans)
    return {"base": base, "raw": raw, "pre": pre, "res": res, "ds": raw / BASE, "plans": plans,
            "model": res / BASE / "cmbunet"}


@pytest.fixture
def bad_raw(env, tmp_path) -> Path:
    """A fresh copy of the base raw dataset to break, as ``tmp_path/raw/Dataset802_Bad``."""
    ds = tmp_path / "raw" / "Dataset802_Bad"
    shutil.copytree(env["ds"], ds, ignore=shutil.ignore_patterns("imagesTs", "labelsTs"))
    return ds


# ---------------------------------------------------------------------------------------------------- raw dataset
def _declare_two_channels(ds: Path) -> tuple[str, str]:
    dj = json.loads((ds / "dataset.json").read_text())
    dj["channel_names"] = {"0": "T2S", "1": "T1"}
    (ds / "dataset.json").write_text(json.dumps(dj))
    for f in sorted((ds / "imagesTr").glob("*_0000.nii.gz"))[1:]:
        shutil.copy(f, f.with_name(f.name.replace("_0000", "_0001")))
    return "synth_000_0001.nii.gz", "case 'synth_000' is missing channel 1"


def _extra_channel(ds: Path) -> tuple[str, str]:
    shutil.copy(ds / "imagesTr/synth_001_0000.nii.gz", ds / "imagesTr/synth_001_0001.nii.gz")
    return "synth_001_0001.nii.gz", "channel index 0001 but dataset.json declares 1 channel(s)"


def _wrong_ending(ds: Path) -> tuple[str, str]:
    src = ds / "imagesTr/synth_001_0000.nii.gz"
    write(read(src), ds / "imagesTr/synth_001_0000.nrrd")
    src.unlink()
    return "synth_001_0000.nrrd", "does not end with the dataset's file_ending '.nii.gz'"


def _corrupt_gzip(ds: Path) -> tuple[str, str]:
    f = ds / "imagesTr/synth_001_0000.nii.gz"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return "synth_001_0000.nii.gz", "truncated or corrupt gzip"


def _image_2d(ds: Path) -> tuple[str, str]:
    write(sitk.GetImageFromArray(np.ones((40, 50), np.float32)), ds / "imagesTr/synth_001_0000.nii.gz")
    return "synth_001_0000.nii.gz", "is 2D"


def _image_4d(ds: Path) -> tuple[str, str]:
    write(sitk.GetImageFromArray(np.ones((2, 8, 9, 10), np.float32), isVector=False), ds / "imagesTr/synth_001_0000.nii.gz")
    return "synth_001_0000.nii.gz", "is 4D"


def _nonfinite(value: float) -> Callable[[Path], tuple[str, str]]:
    def make(ds: Path) -> tuple[str, str]:
        f = ds / "imagesTr/synth_001_0000.nii.gz"
        img = read(f)
        arr = sitk.GetArrayFromImage(img).astype(np.float32)
        arr[5, 10:12, 10:13] = value
        write(like(img, arr), f)
        return "synth_001_0000.nii.gz", "contains 6 NaN/inf voxel(s)"
    return make


def _all_zero(ds: Path) -> tuple[str, str]:
    f = ds / "imagesTr/synth_001_0000.nii.gz"
    img = read(f)
    write(like(img, np.zeros(sitk.GetArrayFromImage(img).shape, np.float32)), f)
    return "synth_001_0000.nii.gz", "image is all zero"


def _label_value(value: int) -> Callable[[Path], tuple[str, str]]:
    def make(ds: Path) -> tuple[str, str]:
        f = ds / "labelsTr/synth_001.nii.gz"
        img = read(f)
        arr = sitk.GetArrayFromImage(img).astype(np.uint8)
        arr[4, 4, 4] = value
        write(like(img, arr), f)
        return "labelsTr/synth_001.nii.gz", f"label is not binary: contains value(s) {value}"
    return make


def _label_shape(ds: Path) -> tuple[str, str]:
    f = ds / "labelsTr/synth_001.nii.gz"
    img = read(f)
    arr = sitk.GetArrayFromImage(img)[:-1]
    small = sitk.GetImageFromArray(arr)
    small.SetSpacing(img.GetSpacing()), small.SetOrigin(img.GetOrigin()), small.SetDirection(img.GetDirection())
    write(small, f)
    return "labelsTr/synth_001.nii.gz", "geometry does not match image synth_001_0000.nii.gz: shape"


def _label_origin(ds: Path) -> tuple[str, str]:
    f = ds / "labelsTr/synth_001.nii.gz"
    img = read(f)
    img.SetOrigin([o + 5.0 for o in img.GetOrigin()])
    write(img, f)
    return "labelsTr/synth_001.nii.gz", "origin"


def _label_direction(ds: Path) -> tuple[str, str]:
    f = ds / "labelsTr/synth_001.nii.gz"
    img = read(f)
    img.SetDirection([-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0])
    write(img, f)
    return "labelsTr/synth_001.nii.gz", "direction cosines differ"


def _empty(ds: Path) -> tuple[str, str]:
    for sub in ("imagesTr", "labelsTr"):
        for f in (ds / sub).iterdir():
            f.unlink()
    dj = json.loads((ds / "dataset.json").read_text())
    dj["numTraining"] = 0
    (ds / "dataset.json").write_text(json.dumps(dj))
    return "imagesTr", "dataset is empty: no training images found"


def _json_missing_keys(ds: Path) -> tuple[str, str]:
    dj = json.loads((ds / "dataset.json").read_text())
    del dj["file_ending"], dj["labels"]
    (ds / "dataset.json").write_text(json.dumps(dj))
    return "dataset.json", "missing required key(s): labels, file_ending"


def _letter_case_collision(ds: Path) -> tuple[str, str]:
    shutil.copy(ds / "imagesTr/synth_001_0000.nii.gz", ds / "imagesTr/SYNTH_001_0000.nii.gz")
    shutil.copy(ds / "labelsTr/synth_001.nii.gz", ds / "labelsTr/SYNTH_001.nii.gz")
    _bump_num_training(ds, 1)
    return "imagesTr", "case names SYNTH_001, synth_001 differ only in letter case"


def _channel_collision(ds: Path) -> tuple[str, str]:
    shutil.copy(ds / "imagesTr/synth_001_0000.nii.gz", ds / "imagesTr/synth_001_0001_0000.nii.gz")
    shutil.copy(ds / "labelsTr/synth_001.nii.gz", ds / "labelsTr/synth_001_0001.nii.gz")
    _bump_num_training(ds, 1)
    return "imagesTr", "case name 'synth_001_0001' is ambiguous with channel 0001 of case 'synth_001'"


def _missing_label(ds: Path) -> tuple[str, str]:
    (ds / "labelsTr/synth_002.nii.gz").unlink()
    return "labelsTr/synth_002.nii.gz", "label of training case 'synth_002' is missing"


def _bump_num_training(ds: Path, n: int) -> None:
    dj = json.loads((ds / "dataset.json").read_text())
    dj["numTraining"] += n
    (ds / "dataset.json").write_text(json.dumps(dj))


RAW_KINDS = {
    "missing channel file": _declare_two_channels,
    "extra channel file": _extra_channel,
    "wrong file ending": _wrong_ending,
    "corrupt gzip": _corrupt_gzip,
    "2D image": _image_2d,
    "4D image": _image_4d,
    "NaN in image": _nonfinite(np.nan),
    "inf in image": _nonfinite(np.inf),
    "all-zero image": _all_zero,
    "label value 2": _label_value(2),
    "label value 255": _label_value(255),
    "label shape != image": _label_shape,
    "label origin != image": _label_origin,
    "label direction != image": _label_direction,
    "empty dataset": _empty,
    "dataset.json missing keys": _json_missing_keys,
    "case names differing in letter case": _letter_case_collision,
    "case name reads as a channel file": _channel_collision,
    "missing label": _missing_label,
}


@pytest.mark.parametrize("kind", list(RAW_KINDS))
def test_integrity_check_refuses_bad_raw_dataset(kind, bad_raw, tmp_path, capsys):
    """``cmbunet_plan_and_preprocess --verify_dataset_integrity`` names every bad file and writes nothing."""
    where, problem = RAW_KINDS[kind](bad_raw)
    pre = tmp_path / "pre"
    err = run_and_check(capsys, plan_main, ["-d", "802", "--verify_dataset_integrity", "--raw-root", str(bad_raw.parent),
                                            "--preprocessed-root", str(pre), "-np", "1"],
                        inputs=[bad_raw], outputs=[pre], expect=["dataset integrity check failed", problem])
    line = next(l for l in err.splitlines() if problem in l)
    assert where in line, line  # the problem is reported next to the file it is about
    assert not pre.exists()


# Without --verify_dataset_integrity the same user errors must still stop the command before it writes anything
# (NaN/inf and non-binary labels are not errors there: they are replaced and binarised, as documented).
PLAIN_KINDS = {
    "corrupt gzip": (_corrupt_gzip, "1"),
    "corrupt gzip, 2 worker processes": (_corrupt_gzip, "2"),
    "2D image": (_image_2d, "1"),
    "label shape != image": (_label_shape, "1"),
    "label origin != image": (_label_origin, "1"),
    "missing channel file": (_declare_two_channels, "1"),
    "dataset.json missing keys": (_json_missing_keys, "1"),
    "empty dataset": (_empty, "1"),
}


@pytest.mark.parametrize("kind", list(PLAIN_KINDS))
def test_plan_and_preprocess_refuses_bad_raw_dataset_without_verify(kind, bad_raw, tmp_path, capsys):
    make, workers = PLAIN_KINDS[kind]
    where, problem = make(bad_raw)
    pre = tmp_path / "pre"
    expect = [where] if kind in ("empty dataset",) else [where, problem.split(":")[0]]
    if kind == "corrupt gzip" or kind.startswith("corrupt gzip,"):
        expect = [where, "truncated or corrupt gzip"]
    elif kind == "2D image":
        expect = [where, "is 2D"]
    elif kind.startswith("label"):
        expect = [where, "label geometry does not match"]
    elif kind == "empty dataset":
        expect = ["imagesTr", "contains no training case"]
    run_and_check(capsys, plan_main, ["-d", "802", "--raw-root", str(bad_raw.parent), "--preprocessed-root", str(pre),
                                      "-np", workers, "--preset", "tiny"],
                  inputs=[bad_raw], outputs=[pre], expect=expect)
    assert not pre.exists()


# ---------------------------------------------------------------------------------------------------- roots, outputs
def test_missing_environment_variable(env, tmp_path, capsys, monkeypatch):
    for var in ("CMBUNET_RAW", "CMBUNET_PREPROCESSED", "CMBUNET_RESULTS"):
        monkeypatch.delenv(var, raising=False)
    run_and_check(capsys, plan_main, ["-d", BASE, "--preprocessed-root", str(tmp_path / "pre")], inputs=[env["ds"]],
                  outputs=[tmp_path], expect=["CMBUNET_RAW is not set"])
    run_and_check(capsys, train_main, [BASE, "0", "--results-root", str(tmp_path / "res")], inputs=[env["pre"]],
                  outputs=[tmp_path], expect=["CMBUNET_PREPROCESSED is not set"])
    run_and_check(capsys, predict_main, ["-i", str(env["ds"] / "imagesTs"), "-o", str(tmp_path / "out"), "-d", BASE],
                  inputs=[env["ds"], env["res"]], outputs=[tmp_path], expect=["CMBUNET_RESULTS is not set"])
    run_and_check(capsys, convert_main, ["-i", str(tmp_path), "-d", "5"], inputs=[], outputs=[tmp_path],
                  expect=["CMBUNET_RAW is not set"])


def test_unwritable_output_folder(env, tmp_path, capsys):
    target = unwritable_folder(tmp_path)
    outputs = [tmp_path]
    run_and_check(capsys, plan_main, ["-d", BASE, "--raw-root", str(env["raw"]), "--preprocessed-root", str(target),
                                      "-np", "1", "--preset", "tiny"],
                  inputs=[env["ds"]], outputs=outputs, expect=[str(target)])
    run_and_check(capsys, predict_main, ["-i", str(env["ds"] / "imagesTs"), "-o", str(target), "-m", str(env["model"])],
                  inputs=[env["ds"], env["model"]], outputs=outputs, expect=[str(target)])
    run_and_check(capsys, synthetic_main, ["-o", str(target), "--cases", "1"], inputs=[], outputs=outputs,
                  expect=[str(target)])
    run_and_check(capsys, train_main, [BASE, "0", "-s", "screening", "--preprocessed-root", str(env["pre"]),
                                       "--results-root", str(target)],
                  inputs=[env["pre"]], outputs=outputs, expect=[str(target)])
    labels = env["ds"] / "labelsTs"
    run_and_check(capsys, evaluate_main, ["-ref", str(labels), "-pred", str(labels), "-o", str(target / "eval")],
                  inputs=[labels], outputs=outputs, expect=[str(target)])


# ---------------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("argv, expect", [
    (["7"], ["fold 7 does not exist", "folds 0..2"]),
    (["x"], ["fold must be a number"]),
    (["0", "-s", "discrimination"], ["needs a trained screening stage", "fold_0/screening/checkpoint_final.pth"]),
    (["0", "-s", "segmentation"], ["needs a trained screening stage"]),
], ids=["fold 7", "fold x", "discrimination before screening", "segmentation before screening"])
def test_train_refuses(env, tmp_path, capsys, argv, expect):
    res = tmp_path / "res"
    run_and_check(capsys, train_main, [BASE, *argv, "--preprocessed-root", str(env["pre"]), "--results-root", str(res)],
                  inputs=[env["pre"]], outputs=[tmp_path], expect=expect)
    assert not res.exists()


def test_train_refuses_a_model_folder_of_other_plans(env, tmp_path, capsys):
    """Results of a dataset planned differently (plans from another dataset) are never overwritten."""
    other = apply_overrides(env["plans"], ["target_spacing=[2.0,2.0,3.0]"])
    model = write_fake_model(tmp_path / "res" / BASE / "cmbunet", other)
    run_and_check(capsys, train_main, [BASE, "0", "--preprocessed-root", str(env["pre"]), "--results-root",
                                       str(tmp_path / "res")],
                  inputs=[env["pre"]], outputs=[tmp_path], expect=[str(model), "other plans"])


def _copy_preprocessed(env, tmp_path) -> Path:
    pre = tmp_path / "pre"
    shutil.copytree(env["pre"], pre)
    return pre


def test_train_refuses_preprocessed_data_of_other_plans(env, tmp_path, capsys):
    """Re-planned with --no-preprocess: the cases on disk no longer match plans.json and are refused."""
    pre = _copy_preprocessed(env, tmp_path)
    assert plan_main(["-d", BASE, "--raw-root", str(env["raw"]), "--preprocessed-root", str(pre), "-np", "1",
                      "--preset", "tiny", "--no-preprocess", "--override", "target_spacing=[1.5,1.5,2.5]"]) == 0
    run_and_check(capsys, train_main, [BASE, "0", "-s", "screening", "-npp", "0", "--preprocessed-root", str(pre),
                                       "--results-root", str(tmp_path / "res")],
                  inputs=[pre / BASE / "data"], outputs=[pre / BASE / "data"],
                  expect=["data/synth_0", "was preprocessed with plans", "plans.json hashes to"])
    assert not list((tmp_path / "res").rglob("*.pth"))


def test_truncated_preprocessed_case_is_an_input_error(env, tmp_path):
    from cmbunet.preprocessing.preprocessor import load_preprocessed_case

    pre = _copy_preprocessed(env, tmp_path)
    npz = sorted((pre / BASE / "data").glob("*.npz"))[0]
    npz.write_bytes(npz.read_bytes()[:-300])
    with pytest.raises(InputError, match="cannot be read as a preprocessed case"):
        load_preprocessed_case(pre / BASE, npz.stem)


def test_train_refuses_truncated_preprocessed_case(env, tmp_path, capsys):
    pre = _copy_preprocessed(env, tmp_path)
    splits = json.loads((pre / BASE / "splits_final.json").read_text())
    npz = pre / BASE / "data" / f"{splits[0]['train'][0]}.npz"
    npz.write_bytes(npz.read_bytes()[:-300])
    run_and_check(capsys, train_main, [BASE, "0", "-s", "screening", "-npp", "0", "--preprocessed-root", str(pre),
                                       "--results-root", str(tmp_path / "res")],
                  inputs=[pre / BASE / "data"], outputs=[pre / BASE / "data"],
                  expect=[npz.name, "cannot be read as a preprocessed case"])


# ---------------------------------------------------------------------------------------------------- prediction
def test_predict_never_overwrites_its_input(env, tmp_path, capsys):
    folder = tmp_path / "scans"
    folder.mkdir()
    scan = folder / "scan.nii.gz"
    shutil.copy(env["ds"] / "imagesTs" / "synth_003_0000.nii.gz", scan)
    before = tree_state(folder)
    capsys.readouterr()
    rc = predict_main(["-i", str(scan), "-o", str(folder), "-m", str(env["model"]), "-npp", "0"])
    err = capsys.readouterr().err
    assert tree_state(folder).get(str(scan)) == before[str(scan)], "the input scan was overwritten"
    assert rc == 2 and "scan.nii.gz" in err


def test_predict_without_trained_model(env, tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    save_plans(env["plans"], model / "plans.json")
    out = tmp_path / "out"
    run_and_check(capsys, predict_main, ["-i", str(env["ds"] / "imagesTs"), "-o", str(out), "-m", str(model)],
                  inputs=[env["ds"], model], outputs=[tmp_path], expect=[str(model), "no fold_* folder has all three"])
    run_and_check(capsys, predict_main, ["-i", str(env["ds"] / "imagesTs"), "-o", str(out), "-m", str(env["model"]),
                                         "-f", "3"],
                  inputs=[env["ds"], env["model"]], outputs=[tmp_path],
                  expect=["checkpoint(s) missing", "fold_3/screening/checkpoint_final.pth"])
    run_and_check(capsys, predict_main, ["-i", str(env["ds"] / "imagesTs"), "-o", str(out), "-m",
                                         str(tmp_path / "nowhere")],
                  inputs=[env["ds"]], outputs=[tmp_path], expect=["nowhere", "model folder does not exist"])
    run_and_check(capsys, predict_main, ["-i", str(tmp_path / "no_input"), "-o", str(out), "-m", str(env["model"])],
                  inputs=[env["model"]], outputs=[tmp_path], expect=["no_input", "input does not exist"])
    assert not out.exists()


def test_predict_refuses_checkpoint_of_other_plans(env, tmp_path, capsys):
    """Plans from another dataset next to the checkpoints: the plans hash does not match, nothing runs."""
    other = apply_overrides(env["plans"], ["target_spacing=[2.0,2.0,3.0]"])
    model = write_fake_model(tmp_path / "model", other, checkpoint_plans=env["plans"])
    out = tmp_path / "out"
    run_and_check(capsys, predict_main, ["-i", str(env["ds"] / "imagesTs"), "-o", str(out), "-m", str(model)],
                  inputs=[env["ds"], model], outputs=[tmp_path],
                  expect=["fold_0/screening/checkpoint_final.pth", f"was trained with plans {plans_hash(env['plans'])}",
                          f"plans in use hash to {plans_hash(other)}"])
    with pytest.raises(PlansMismatchError, match="was trained with plans"):
        load_checkpoint(model / "fold_0/screening/checkpoint_final.pth", expected_plans_hash=plans_hash(other))


class _Payload:
    """Unpickling this runs ``os.makedirs(marker)``: a stand-in for arbitrary code in a malicious checkpoint."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_checkpoint_with_pickled_object_is_refused_without_running_it(env, tmp_path, capsys):
    marker = tmp_path / "code_ran"
    model = write_fake_model(tmp_path / "model", env["plans"])
    ckpt = model / "fold_0/screening/checkpoint_final.pth"
    payload = torch.load(ckpt, weights_only=True)
    payload["extra"] = _Payload(marker)
    torch.save(payload, ckpt)
    with pytest.raises(InputError, match="cannot be read as a cmbunet checkpoint"):
        load_checkpoint(ckpt)
    assert not marker.exists()
    out = tmp_path / "out"
    run_and_check(capsys, predict_main, ["-i", str(env["ds"] / "imagesTs"), "-o", str(out), "-m", str(model)],
                  inputs=[env["ds"], model], outputs=[tmp_path],
                  expect=[str(ckpt), "cannot be read as a cmbunet checkpoint", "Weights only load failed"])
    assert not marker.exists() and not out.exists()


def test_predict_folder_with_broken_cases_runs_the_good_ones(env, tmp_path, capsys):
    """One case lacks its channel file, one is a truncated gzip: the others are predicted, exit code 1."""
    src = env["ds"] / "imagesTs"
    inp = tmp_path / "input"
    inp.mkdir()
    good = ["synth_003", "synth_004"]
    for case in good:
        shutil.copy(src / f"{case}_0000.nii.gz", inp)
    shutil.copy(src / "synth_005_0000.nii.gz", inp / "synth_005_0001.nii.gz")  # channel 0 missing
    data = (src / "synth_005_0000.nii.gz").read_bytes()
    (inp / "synth_006_0000.nii.gz").write_bytes(data[: len(data) // 2])  # truncated gzip
    out = tmp_path / "out"
    before = tree_state(inp, env["model"])
    capsys.readouterr()
    rc = predict_main(["-i", str(inp), "-o", str(out), "-m", str(env["model"]), "-npp", "0"])
    captured = capsys.readouterr()
    assert rc == 1, captured.err
    assert tree_state(inp, env["model"]) == before
    summary = pd.read_csv(out / "summary.csv").set_index("case")
    assert summary.loc[good, "status"].tolist() == ["ok", "ok"]
    assert summary.loc["synth_005", "status"] == "failed"
    assert "missing channel file(s) synth_005_0000.nii.gz" in summary.loc["synth_005", "error"]
    assert summary.loc["synth_006", "status"] == "failed"
    assert "synth_006_0000.nii.gz" in summary.loc["synth_006", "error"]
    assert "truncated or corrupt gzip" in summary.loc["synth_006", "error"]
    assert "failed: synth_005: missing channel file(s) synth_005_0000.nii.gz" in captured.out
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(["summary.csv", "prediction_record.json"] + [f"{c}.nii.gz" for c in good] + [f"{c}_cmbs.csv" for c in good])


# ---------------------------------------------------------------------------------------------------- evaluation, VALDO
def test_evaluate_refuses_corrupt_prediction(env, tmp_path, capsys):
    labels = env["ds"] / "labelsTs"
    pred = tmp_path / "pred"
    pred.mkdir()
    for f in labels.iterdir():
        shutil.copy(f, pred / f.name)
    broken = sorted(pred.iterdir())[1]
    broken.write_bytes(broken.read_bytes()[:-200])
    run_and_check(capsys, evaluate_main, ["-ref", str(labels), "-pred", str(pred)], inputs=[labels], outputs=[pred],
                  expect=[broken.name, "truncated or corrupt gzip"])


def test_convert_valdo_refuses_bad_subjects(env, tmp_path, capsys):
    valdo = write_dataset(tmp_path / "valdo", 2, layout="valdo", seed=3)
    raw = tmp_path / "raw"
    first = sorted(p for p in valdo.iterdir() if p.is_dir())[0]
    # a requested modality is missing: refused before anything is read or written
    (first / f"{first.name}_space-T2S_desc-masked_T1.nii.gz").unlink()
    run_and_check(capsys, convert_main, ["-i", str(valdo), "-d", "5", "--raw-root", str(raw), "--modalities", "T2S", "T1"],
                  inputs=[valdo], outputs=[tmp_path / "raw"],
                  expect=[f"{first.name}_space-T2S_desc-masked_T1.nii.gz", "requested modality file is missing"])
    assert not raw.exists()
    # the label's origin differs from the image's: nothing of that subject, and no dataset.json, is written
    lab = first / f"{first.name}_space-T2S_CMB.nii.gz"
    img = read(lab)
    img.SetOrigin([o + 4.0 for o in img.GetOrigin()])
    write(img, lab)
    capsys.readouterr()
    assert convert_main(["-i", str(valdo), "-d", "5", "--raw-root", str(raw)]) == 2
    err = capsys.readouterr().err
    assert lab.name in err and "label geometry does not match" in err and "origin" in err
    written = [p.name for p in raw.rglob("*") if p.is_file()] if raw.exists() else []
    assert not any(first.name in name for name in written), written
    assert "dataset.json" not in written


# ---------------------------------------------------------------------------------------------------- console scripts
@pytest.mark.parametrize("script, args, expect", [
    ("cmbunet_plan_and_preprocess", ["-d", BASE], "CMBUNET_RAW is not set"),
    ("cmbunet_train", [BASE, "7"], "fold 7 does not exist"),
    ("cmbunet_predict", ["-i", "IMAGES", "-o", "OUT", "-m", "MODEL_WITHOUT_FOLDS"], "no fold_* folder has all three"),
])
def test_console_scripts(env, tmp_path, script, args, expect):
    model = tmp_path / "model"
    model.mkdir()
    save_plans(env["plans"], model / "plans.json")
    subst = {"IMAGES": str(env["ds"] / "imagesTs"), "OUT": str(tmp_path / "out"), "MODEL_WITHOUT_FOLDS": str(model)}
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("CMBUNET_")}
    run_env["CMBUNET_PREPROCESSED"] = str(env["pre"])
    before = tree_state(env["ds"], env["pre"])
    proc = subprocess.run([str(BIN / script), *[subst.get(a, a) for a in args]], capture_output=True, text=True,
                          env=run_env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert expect in proc.stderr and "Traceback" not in proc.stderr
    assert tree_state(env["ds"], env["pre"]) == before
    assert not (tmp_path / "out").exists()
