"""Nothing lost, nothing silently skipped: failed writes are caught before they replace anything, every entry
of a prediction input is predicted or listed with a reason, geometry is checked before scoring, plans and
settings values are checked when loaded, and training data problems name the subject or file.

Same style as ``test_bad_input.py``: small synthetic cases, the real commands, assertions on what they print
and on the files they leave.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import ndimage

from cmbunet.dataset.convert_valdo import main as convert_main
from cmbunet.inference.cli import main as predict_main
from cmbunet.synthetic.writer import write_dataset
from cmbunet.utilities import file_io
from test_bad_input import BASE, BIN, bad_raw, env, like, read, run_and_check, tree_state, write, write_fake_model  # noqa: F401


def hidden_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*")) if folder.exists() else []


def run_script(script: str, args: list[str], fsize_limit: int | None = None) -> subprocess.CompletedProcess:
    """A console script in a child process, optionally under a file size limit (``ulimit -f``): SimpleITK's NIfTI
    writer does not fail there but leaves a truncated file, exactly as on a full disk."""

    def limit() -> None:
        if fsize_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, resource.RLIM_INFINITY))

    run_env = {k: v for k, v in os.environ.items() if not k.startswith("CMBUNET_")}
    return subprocess.run([str(BIN / script), *args], capture_output=True, text=True, env=run_env, timeout=300,
                          preexec_fn=limit)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def temp_name(target: str, pid: int, suffix: str = ".nii.gz") -> str:
    return f".{target}.part-{file_io._HOST}-{pid}-abcd1234{suffix}"


# ---------------------------------------------------------------------------------------------------- 1. writes
def test_predict_on_a_full_disk_writes_nothing_and_the_rerun_predicts_again(env, tmp_path):
    """Under a 20 kB file size limit the probability maps (>100 kB) cannot be written: each case fails naming
    its file, nothing half-written is left, and the re-run predicts every case instead of skipping it."""
    out = tmp_path / "out"
    args = ["-i", str(env["ds"] / "imagesTs"), "-o", str(out), "-m", str(env["model"]), "--save_probabilities",
            "-npp", "0"]
    proc = run_script("cmbunet_predict", args, fsize_limit=20_000)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "synth_003_probabilities.nii.gz: was not written completely" in proc.stdout
    summary = pd.read_csv(out / "summary.csv")
    assert summary["status"].tolist() == ["failed"] * 3
    assert summary["error"].str.contains("_probabilities.nii.gz: was not written completely").all()
    # no truncated file in place, no temp file
    assert sorted(p.name for p in out.iterdir()) == ["prediction_record.json", "summary.csv"]

    proc = run_script("cmbunet_predict", args)
    assert proc.returncode == 0, proc.stderr
    summary = pd.read_csv(out / "summary.csv")
    assert summary["status"].tolist() == ["ok"] * 3
    for case in ("synth_003", "synth_004", "synth_005"):
        assert sitk.ReadImage(str(out / f"{case}_probabilities.nii.gz")).GetSize() == read(
            env["ds"] / "imagesTs" / f"{case}_0000.nii.gz").GetSize()


def test_convert_valdo_on_a_full_disk_names_the_file_and_leaves_no_partial_file(tmp_path):
    valdo = write_dataset(tmp_path / "valdo", 2, layout="valdo", seed=3)
    raw = tmp_path / "raw"
    args = ["-i", str(valdo), "-d", "5", "--raw-root", str(raw)]
    before = tree_state(valdo)
    proc = run_script("cmbunet_convert_valdo", args, fsize_limit=20_000)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "_0000.nii.gz: was not written completely" in proc.stderr, proc.stderr
    written = [p for p in raw.rglob("*") if p.is_file()]
    assert all(sitk.ReadImage(str(p)) for p in written)  # whatever is in place is complete
    assert not (raw / "Dataset005_VALDO" / "dataset.json").exists()
    assert not hidden_files(raw)
    assert tree_state(valdo) == before
    proc = run_script("cmbunet_convert_valdo", args)
    assert proc.returncode == 0, proc.stderr
    assert len(list((raw / "Dataset005_VALDO" / "imagesTr").glob("*.nii.gz"))) == 2


def test_temp_files_of_a_killed_run_are_removed_on_the_next_run(env, tmp_path, capsys):
    """A temp file whose writer is gone is removed; one of a writer that still runs (another part) is kept."""
    out = tmp_path / "out"
    out.mkdir()
    stale = out / temp_name("synth_003.nii.gz", dead_pid())
    stale.write_bytes(b"\x1f\x8b half")
    old = out / ".synth_004.nii.gz.part-otherhost-12-abcd1234.nii.gz"  # another machine, untouched for 2 hours
    old.write_bytes(b"x")
    os.utime(old, (old.stat().st_mtime - 7200,) * 2)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = out / temp_name("synth_005.nii.gz", sleeper.pid)
        live.write_bytes(b"x")
        assert predict_main(["-i", str(env["ds"] / "imagesTs"), "-o", str(out), "-m", str(env["model"]),
                             "-npp", "0"]) == 0
        assert hidden_files(out) == [live.name]
    finally:
        sleeper.kill()
        sleeper.wait()
    assert pd.read_csv(out / "summary.csv")["status"].tolist() == ["ok"] * 3


def test_a_write_that_fails_verification_replaces_nothing(tmp_path):
    """The check sits in the one atomic writer: a writer that leaves a short gzip file never reaches the target."""
    target = tmp_path / "table.csv.gz"
    target.write_bytes(b"old")
    with pytest.raises(file_io.InputError, match=r"table.csv.gz: was not written completely .*incomplete gzip"):
        with file_io.atomic_path(target) as tmp:
            import gzip

            tmp.write_bytes(gzip.compress(b"a,b\n1,2\n" * 100)[:-10])
    assert target.read_bytes() == b"old"
    assert not hidden_files(tmp_path)


# ---------------------------------------------------------------------------------------------------- 2. every input
def test_predict_accounts_for_every_entry_of_the_input(env, tmp_path, capsys):
    """BIDS sessions, non-ASCII subject ids and ``.nii`` files are predicted; everything else is listed with the
    reason, in summary.csv and on the terminal."""
    src = env["ds"] / "imagesTs"
    inp = tmp_path / "input"
    bids = inp / "sub-101" / "ses-2" / "anat"
    bids.mkdir(parents=True)
    shutil.copy(src / "synth_003_0000.nii.gz", bids / "sub-101_ses-2_space-T2S_desc-masked_T2S.nii.gz")
    (inp / "sub-Ünal").mkdir()
    shutil.copy(src / "synth_004_0000.nii.gz", inp / "sub-Ünal" / "sub-Ünal_space-T2S_desc-masked_T2S.nii.gz")
    sitk.WriteImage(read(src / "synth_005_0000.nii.gz"), str(inp / "plain_0000.nii"), False)
    shutil.copy(inp / "plain_0000.nii", inp / "dup_0000.nii")
    shutil.copy(src / "synth_005_0000.nii.gz", inp / "dup_0000.nii.gz")
    shutil.copy(src / "synth_005_0000.nii.gz", inp / "scan.nii.gz")
    (inp / "notes.txt").write_text("scanner notes")
    (inp / "derivatives").mkdir()
    shutil.copy(src / "synth_005_0000.nii.gz", inp / "extra_0000.nii.gz")
    shutil.copy(src / "synth_005_0000.nii.gz", inp / "extra_0001.nii.gz")  # the model has one channel
    out = tmp_path / "out"
    before = tree_state(inp)
    capsys.readouterr()
    assert predict_main(["-i", str(inp), "-o", str(out), "-m", str(env["model"]), "-npp", "0"]) == 1
    printed = capsys.readouterr().out
    assert tree_state(inp) == before
    summary = pd.read_csv(out / "summary.csv").set_index("case")
    assert summary["status"].to_dict() == {
        "dup": "failed", "plain": "ok", "sub-101_ses-2": "ok", "sub-Ünal": "ok", "extra": "ok",
        "derivatives": "ignored", "notes.txt": "ignored", "scan.nii.gz": "ignored", "extra_0001.nii.gz": "ignored"}
    assert summary.loc["extra_0001.nii.gz", "error"] == "channel 0001 but the model has 1 channel(s)"
    assert "2 files for channel 0000 of dup" in summary.loc["dup", "error"]
    assert "4-digit channel suffix" in summary.loc["scan.nii.gz", "error"]
    for name in ("derivatives", "notes.txt", "scan.nii.gz", "extra_0001.nii.gz"):
        assert f"ignored: {name}: {summary.loc[name, 'error']}" in printed
    assert "4 case(s) predicted, 0 skipped (already done), 1 failed, 4 input entries ignored" in printed
    for stem, image in (("sub-101_ses-2_space-T2S_prediction", "synth_003"), ("sub-Ünal_space-T2S_prediction", "synth_004"),
                        ("plain", "synth_005")):
        assert sitk.ReadImage(str(out / f"{stem}.nii.gz")).GetSize() == read(src / f"{image}_0000.nii.gz").GetSize()


def test_convert_valdo_reads_nii_sessions_and_non_ascii_subjects(tmp_path, capsys):
    valdo = write_dataset(tmp_path / "valdo", 3, layout="valdo", seed=3)
    subjects = sorted(p.name for p in valdo.iterdir() if p.is_dir())
    # subject 1: .nii files; subject 2: a BIDS session folder; subject 3: a non-ASCII id
    for f in (valdo / subjects[0]).iterdir():
        sitk.WriteImage(read(f), str(f)[:-3], False)
        f.unlink()
    ses = valdo / subjects[1] / "ses-1" / "anat"
    ses.mkdir(parents=True)
    for f in list((valdo / subjects[1]).glob("*.nii.gz")):
        f.rename(ses / f.name.replace(subjects[1], f"{subjects[1]}_ses-1"))
    (valdo / subjects[2]).rename(valdo / "sub-Ünal")
    for f in (valdo / "sub-Ünal").iterdir():
        f.rename(f.with_name(f.name.replace(subjects[2], "sub-Ünal")))
    raw = tmp_path / "raw"
    before = tree_state(valdo)
    assert convert_main(["-i", str(valdo), "-d", "6", "--raw-root", str(raw)]) == 0, capsys.readouterr().err
    assert "ignored: synthetic_truth.json: not a sub-* subject folder" in capsys.readouterr().out
    assert tree_state(valdo) == before
    ds = raw / "Dataset006_VALDO"
    assert sorted(p.name for p in (ds / "labelsTr").iterdir()) == sorted(
        [f"{subjects[0]}.nii.gz", f"{subjects[1]}_ses-1.nii.gz", "sub-Ünal.nii.gz"])
    converted = read(ds / "imagesTr" / f"{subjects[0]}_0000.nii.gz")
    original = read(valdo / subjects[0] / f"{subjects[0]}_space-T2S_desc-masked_T2S.nii")
    assert np.array_equal(sitk.GetArrayFromImage(converted), sitk.GetArrayFromImage(original).astype(np.float32))
    # a subject with both a .nii and a .nii.gz of one modality is refused, naming both
    shutil.copy(ses / f"{subjects[1]}_ses-1_space-T2S_desc-masked_T2S.nii.gz",
                ses / f"{subjects[1]}_ses-1_space-T2S_desc-masked_T2S.nii")
    run_and_check(capsys, convert_main, ["-i", str(valdo), "-d", "8", "--raw-root", str(raw)], inputs=[valdo],
                  outputs=[raw], expect=[f"{subjects[1]}_ses-1_space-T2S_desc-masked_T2S.nii", "second file for T2S"])


# ---------------------------------------------------------------------------------------------------- 3. geometry
def test_evaluate_checks_the_whole_geometry(env, tmp_path, capsys):
    """Same voxels, other orientation or origin: refused naming the file and the difference; with --resample a
    prediction that is the reference in another orientation scores F1 1, as it should."""
    from cmbunet.evaluation.cli import main as evaluate_main

    labels = env["ds"] / "labelsTs"
    pred = tmp_path / "pred"
    pred.mkdir()
    for f in labels.iterdir():
        shutil.copy(f, pred / f.name)
    reoriented = pred / "synth_004.nii.gz"
    img = read(reoriented)
    flipped = sitk.DICOMOrient(img, "LPI" if sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
        img.GetDirection()) != "LPI" else "RAS")
    assert flipped.GetDirection() != img.GetDirection()
    write(flipped, reoriented)
    run_and_check(capsys, evaluate_main, ["-ref", str(labels), "-pred", str(pred)], inputs=[labels],
                  outputs=[pred], expect=["synth_004.nii.gz", "geometry differs from the reference", "direction",
                                          "--resample"])
    capsys.readouterr()
    assert evaluate_main(["-ref", str(labels), "-pred", str(pred), "--resample"]) == 0
    printed = capsys.readouterr().out
    assert "resampled onto the reference grid: synth_004" in printed
    per_case = pd.read_csv(pred / "evaluation" / "metrics_per_case.csv").set_index("case")
    assert per_case.loc["synth_004", "fn"] == 0 and per_case.loc["synth_004", "fp"] == 0
    assert per_case.loc["synth_004", "n_ref"] > 0
    shutil.rmtree(pred / "evaluation")
    shutil.copy(labels / "synth_004.nii.gz", reoriented)

    moved = pred / "synth_005.nii.gz"
    img = read(moved)
    img.SetOrigin([o + 3.0 for o in img.GetOrigin()])
    write(img, moved)
    run_and_check(capsys, evaluate_main, ["-ref", str(labels), "-pred", str(pred)], inputs=[labels],
                  outputs=[pred], expect=["synth_005.nii.gz", "origin"])


# ---------------------------------------------------------------------------------------------------- 4. values
@pytest.mark.parametrize("override, expect", [
    ("inference.max_candidates=2.5", "inference.max_candidates = 2.5: must be an integer >= 1"),
    ("training.cpu.screening.batch_size=0", "training.cpu.screening.batch_size = 0: must be an integer >= 1"),
    ("training.cpu.discrimination.epochs=0", "training.cpu.discrimination.epochs = 0: must be an integer >= 1"),
    ("inference.screening_threshold=-0.2", "inference.screening_threshold = -0.2: must be a number >= 0 and <= 1"),
    ("training.gpu.segmentation.optimizer=adamw", "training.gpu.segmentation.optimizer = \"adamw\": must be one of sgd, adam"),
])
def test_overrides_with_unusable_values_are_refused(env, tmp_path, capsys, override, expect):
    from cmbunet.plan_and_preprocess import main as plan_main

    pre = tmp_path / "pre"
    run_and_check(capsys, plan_main, ["-d", BASE, "--raw-root", str(env["raw"]), "--preprocessed-root", str(pre),
                                      "-np", "1", "--preset", "tiny", "--override", override],
                  inputs=[env["ds"]], outputs=[tmp_path], expect=[f"overrides ['{override}']", expect])
    assert not pre.exists()


def _edited_plans(env, tmp_path, key: str, value) -> Path:
    """A copy of the preprocessed dataset whose plans.json was edited by hand."""
    pre = tmp_path / "pre"
    shutil.copytree(env["pre"], pre)
    plans_file = pre / BASE / "plans.json"
    plans = json.loads(plans_file.read_text())
    node = plans
    *parents, last = key.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    plans_file.write_text(json.dumps(plans))
    return pre


@pytest.mark.parametrize("key, value, expect", [
    ("training.cpu.screening.epochs", 0, "training.cpu.screening.epochs = 0: must be an integer >= 1"),
    ("training.cpu.screening.batch_size", 0, "training.cpu.screening.batch_size = 0: must be an integer >= 1"),
    ("training.cpu.screening.lr", "0.01", "training.cpu.screening.lr = \"0.01\": must be a number > 0"),
])
def test_train_refuses_hand_edited_plans_naming_key_and_file(env, tmp_path, capsys, key, value, expect):
    from cmbunet.training.cli import main as train_main

    pre = _edited_plans(env, tmp_path, key, value)
    res = tmp_path / "res"
    run_and_check(capsys, train_main, [BASE, "0", "-s", "screening", "-npp", "0", "--preprocessed-root", str(pre),
                                       "--results-root", str(res)],
                  inputs=[pre], outputs=[tmp_path], expect=[str(pre / BASE / "plans.json"), expect])
    assert not res.exists()


@pytest.mark.parametrize("settings, expect", [
    ({"screening_threshold": "0.1"}, 'screening_threshold = "0.1": must be a number >= 0 and <= 1'),
    ({"max_candidates": 1e3 + 0.5}, "max_candidates = 1000.5: must be an integer >= 1"),
    ({"discrimination_aggregate": "median"}, 'discrimination_aggregate = "median": must be one of max, mean'),
])
def test_predict_refuses_bad_inference_settings_naming_key_and_file(env, tmp_path, capsys, settings, expect):
    model = write_fake_model(tmp_path / "model", env["plans"])
    (model / "inference_settings.json").write_text(json.dumps(settings))
    out = tmp_path / "out"
    run_and_check(capsys, predict_main, ["-i", str(env["ds"] / "imagesTs"), "-o", str(out), "-m", str(model)],
                  inputs=[env["ds"], model], outputs=[tmp_path],
                  expect=[str(model / "inference_settings.json"), expect])
    assert not out.exists()


def test_predict_refuses_bad_command_line_settings(env, tmp_path, capsys):
    out = tmp_path / "out"
    run_and_check(capsys, predict_main, ["-i", str(env["ds"] / "imagesTs"), "-o", str(out), "-m", str(env["model"]),
                                         "--segmentation-threshold", "0", "--max-candidates", "0"],
                  inputs=[env["ds"], env["model"]], outputs=[tmp_path],
                  expect=["segmentation_threshold = 0.0: must be a number > 0 and <= 1",
                          "max_candidates = 0: must be an integer >= 1"])


# ---------------------------------------------------------------------------------------------------- 5. training data
def test_cmb_labelled_outside_the_nonzero_box_is_kept_and_reported(bad_raw, tmp_path, capsys):
    """A CMB labelled on background beyond the brain's bounding box is not cropped away: the case keeps all its
    CMBs and the summary names the subject."""
    from cmbunet.plan_and_preprocess import main as plan_main

    label = bad_raw / "labelsTr" / "synth_000.nii.gz"
    img = read(label)
    arr = sitk.GetArrayFromImage(img)  # (z, y, x)
    pre_count = ndimage.label(arr > 0, structure=np.ones((3, 3, 3)))[1]
    arr[1:3, 1:3, 1:3] = 1  # a corner far outside the skull-stripped brain
    write(like(img, arr), label)
    pre = tmp_path / "pre"
    capsys.readouterr()
    assert plan_main(["-d", "802", "--raw-root", str(bad_raw.parent), "--preprocessed-root", str(pre), "-np", "1",
                      "--preset", "tiny"]) == 0
    printed = capsys.readouterr().out
    assert "warning: synth_000: 1 labelled CMB(s) lie outside the image's non-zero region" in printed
    props = json.loads((pre / "Dataset802_Bad" / "data" / "synth_000.json").read_text())
    assert pre_count > 0 and len(props["cmbs"]) == pre_count + 1
    assert props["crop_bbox"][0][0] <= 1 and props["cmbs_outside_nonzero_box"] == 1


def test_corrupted_preprocessed_case_names_the_file(env, tmp_path, capsys):
    """Not truncated but corrupted inside its compressed stream (zlib error): the file is named and the fix said."""
    import struct
    import zipfile

    from cmbunet.training.cli import main as train_main

    pre = tmp_path / "pre"
    shutil.copytree(env["pre"], pre)
    splits = json.loads((pre / BASE / "splits_final.json").read_text())
    npz = pre / BASE / "data" / f"{splits[0]['train'][0]}.npz"
    with zipfile.ZipFile(npz) as z:
        head = z.getinfo("data.npy").header_offset
    blob = bytearray(npz.read_bytes())
    name_len, extra_len = struct.unpack("<HH", blob[head + 26: head + 30])
    start = head + 30 + name_len + extra_len
    blob[start: start + 32] = b"\xff" * 32  # an invalid deflate block, same length
    npz.write_bytes(bytes(blob))
    run_and_check(capsys, train_main, [BASE, "0", "-s", "screening", "-npp", "0", "--preprocessed-root", str(pre),
                                       "--results-root", str(tmp_path / "res")],
                  inputs=[pre / BASE / "data"], outputs=[pre / BASE / "data"],
                  expect=[str(npz), "corrupt compressed data", "re-run cmbunet_plan_and_preprocess with --clean"])


# ---------------------------------------------------------------------------------------------------- 6. output folder
@pytest.mark.parametrize("where", ["imagesTs", "predictions", ".", "pre"])
def test_predict_refuses_an_output_folder_inside_a_dataset(env, tmp_path, capsys, where):
    base = env["pre"] / BASE if where == "pre" else env["ds"]
    out = base if where in (".", "pre") else base / where
    kind = "preprocessed" if where == "pre" else "raw"
    run_and_check(capsys, predict_main, ["-i", str(env["ds"] / "imagesTs"), "-o", str(out), "-m", str(env["model"])],
                  inputs=[env["ds"], env["pre"], env["model"]], outputs=[env["ds"], env["pre"]],
                  expect=[str(out), f"output folder lies inside the {kind} dataset {base.resolve()}"])
    assert where in (".", "imagesTs", "pre") or not out.exists()


# ---------------------------------------------------------------------------------------------------- 7. Ctrl-C
def test_ctrl_c_in_training_says_that_only_continue_resumes(env, tmp_path, capsys, monkeypatch):
    from cmbunet.training import loop
    from cmbunet.training.cli import main as train_main

    original = loop.save_checkpoint

    def save_then_interrupt(path, ckpt):
        original(path, ckpt)
        if Path(path).name == "checkpoint_latest.pth":
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", save_then_interrupt)
    argv = [BASE, "0", "-s", "screening", "-npp", "0", "--seed", "1", "--preprocessed-root", str(env["pre"]),
            "--results-root", str(tmp_path / "res")]
    capsys.readouterr()
    assert train_main(argv) == 130
    err = capsys.readouterr().err
    assert "run the same command with --c to continue" in err.lower()
    assert "without --c every requested stage is trained again from scratch" in err
    assert "a re-run continues where this one stopped" not in err
    monkeypatch.setattr(loop, "save_checkpoint", original)
    assert train_main(argv + ["--c"]) == 0  # what the message says works
    latest = tmp_path / "res" / BASE / "cmbunet" / "fold_0" / "screening" / "checkpoint_final.pth"
    assert latest.is_file()


def test_ctrl_c_in_prediction_keeps_finished_cases_for_the_rerun(env, tmp_path, capsys, monkeypatch):
    from cmbunet.inference import predictor

    original, calls = predictor.write_case, []

    def write_then_interrupt(result, outputs):
        original(result, outputs)
        calls.append(outputs)
        raise KeyboardInterrupt

    monkeypatch.setattr(predictor, "write_case", write_then_interrupt)
    argv = ["-i", str(env["ds"] / "imagesTs"), "-o", str(tmp_path / "out"), "-m", str(env["model"]), "-npp", "0"]
    capsys.readouterr()
    assert predict_main(argv) == 130
    assert "a re-run continues where this one stopped" in capsys.readouterr().err
    monkeypatch.setattr(predictor, "write_case", original)
    assert predict_main(argv) == 0
    status = pd.read_csv(tmp_path / "out" / "summary.csv").set_index("case")["status"].to_dict()
    assert status == {"synth_003": "skipped (done before)", "synth_004": "ok", "synth_005": "ok"}


# ---------------------------------------------------------------------------------------------------- more unusual inputs
def test_predict_on_a_folder_of_unusual_scans(env, tmp_path, capsys):
    """One folder, many oddities: each is predicted or reported with a reason naming its file."""
    src = env["ds"] / "imagesTs" / "synth_003_0000.nii.gz"
    img = read(src)
    arr = sitk.GetArrayFromImage(img)
    inp = tmp_path / "input"
    inp.mkdir()
    sitk.WriteImage(sitk.JoinSeries([img]), str(inp / "t1_0000.nii.gz"))  # 4D with one time point: fine
    sitk.WriteImage(sitk.JoinSeries([img, img]), str(inp / "t2_0000.nii.gz"))  # 4D with two: refused
    sitk.WriteImage(img, str(inp / "nrrd_0000.nrrd"))  # other formats are read too
    sitk.WriteImage(img, str(inp / "mha_0000.mha"))
    sitk.WriteImage(sitk.RealAndImaginaryToComplex(img, img), str(inp / "complex_0000.nii.gz"))
    (inp / "empty_0000.nii.gz").write_bytes(b"")
    write(like(img, np.full(arr.shape, np.nan, np.float32)), inp / "nan_0000.nii.gz")
    shutil.copy(src, inp / "UPPER_0000.NII.GZ")
    os.symlink(src, inp / "linked_0000.nii.gz")
    os.symlink(tmp_path / "nowhere_0000.nii.gz", inp / "broken_0000.nii.gz")
    tiny = sitk.GetImageFromArray(np.random.default_rng(0).random((4, 4, 4), dtype=np.float32) + 1)
    tiny.SetSpacing(img.GetSpacing())
    sitk.WriteImage(tiny, str(inp / "tiny_0000.nii.gz"))  # smaller than every network block
    out = tmp_path / "out"
    capsys.readouterr()
    assert predict_main(["-i", str(inp), "-o", str(out), "-m", str(env["model"]), "-npp", "0"]) == 1
    assert "Traceback" not in capsys.readouterr().err
    summary = pd.read_csv(out / "summary.csv", keep_default_na=False).set_index("case")  # a case named "nan"
    status, error = summary["status"].to_dict(), summary["error"].fillna("").to_dict()
    assert {c for c, s in status.items() if s == "ok"} == {"t1", "nrrd", "mha", "linked", "tiny"}
    expected = {
        "t2": ("failed", "t2_0000.nii.gz: is 4D"),
        "complex": ("failed", "complex_0000.nii.gz: has complex-valued voxels"),
        "empty": ("failed", "empty_0000.nii.gz: is an empty file (0 bytes)"),
        "nan": ("failed", "nan_0000.nii.gz: image is entirely zero"),
        "UPPER_0000.NII.GZ": ("ignored", "upper-case file ending"),
        "broken_0000.nii.gz": ("ignored", "not a file (broken link?)"),
    }
    for case, (want_status, want_error) in expected.items():
        assert status[case] == want_status and want_error in error[case], (case, status[case], error[case])
    assert len(status) == 11
    capsys.readouterr()
    assert predict_main(["-i", str(inp), "-o", str(out), "-m", str(env["model"]), "-npp", "0"]) == 1  # re-run
    again = pd.read_csv(out / "summary.csv", keep_default_na=False).set_index("case")["status"].to_dict()
    assert again == {c: "skipped (done before)" if s == "ok" else s for c, s in status.items()}
