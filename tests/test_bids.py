"""BIDS in, BIDS derivatives out: ``cmbunet_predict`` on a BIDS dataset built from synthetic scans (two subjects,
one with a session, plus files the model does not read), with ``--output-format bids``; and the BIDS rules of
the input listing (suffixes, parts, sessions, clashes) without a model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import ndimage

from cmbunet.inference import bids
from cmbunet.inference.cli import main
from cmbunet.inference.input_cases import bids_suffixes, find_input_cases
from cmbunet.inference.predictor import CMB_COLUMNS
from cmbunet.synthetic.writer import write_dataset
from test_bad_input import tree_state
from test_predict_cli import write_model

T2S = {"0": "T2S"}


@pytest.fixture(scope="module")
def bids_root(tmp_path_factory) -> Path:
    """A raw BIDS dataset: sub-101 (no session; also a T1w image, a sidecar and a scans table) and sub-102 in
    session ses-1, made from synthetic VALDO-style scans (oblique, anisotropic)."""
    valdo = write_dataset(tmp_path_factory.mktemp("synth") / "valdo", 2, layout="valdo", seed=0)
    root = tmp_path_factory.mktemp("bids") / "ds"
    anat1 = root / "sub-101" / "anat"
    anat2 = root / "sub-102" / "ses-1" / "anat"
    anat1.mkdir(parents=True)
    anat2.mkdir(parents=True)
    shutil.copy(valdo / "sub-101" / "sub-101_space-T2S_desc-masked_T2S.nii.gz", anat1 / "sub-101_T2starw.nii.gz")
    shutil.copy(valdo / "sub-101" / "sub-101_space-T2S_desc-masked_T1.nii.gz", anat1 / "sub-101_T1w.nii.gz")
    (anat1 / "sub-101_T2starw.json").write_text(json.dumps({"EchoTime": 0.02}))
    (root / "sub-101" / "sub-101_scans.tsv").write_text("filename\tacq_time\nanat/sub-101_T2starw.nii.gz\tn/a\n")
    shutil.copy(valdo / "sub-102" / "sub-102_space-T2S_desc-masked_T2S.nii.gz", anat2 / "sub-102_ses-1_T2starw.nii.gz")
    (root / "dataset_description.json").write_text(json.dumps({"Name": "synthetic", "BIDSVersion": "1.10.0"}))
    (root / "participants.tsv").write_text("participant_id\nsub-101\nsub-102\n")
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("results") / "Dataset001_Synth" / "cmbunet", ("T2S",))


@pytest.fixture(scope="module")
def bids_run(bids_root, model, tmp_path_factory) -> tuple[Path, int, dict[str, str], dict[str, str]]:
    out = tmp_path_factory.mktemp("derivatives") / "cmbunet"
    before = tree_state(bids_root)
    code = main(["-i", str(bids_root), "-o", str(out), "-m", str(model), "--output-format", "bids",
                 "--save_probabilities", "-npp", "0"])
    return out, code, before, tree_state(bids_root)


def read(path: Path) -> sitk.Image:
    return sitk.ReadImage(str(path))


def array(img: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(img).transpose(2, 1, 0)


def test_bids_derivative_outputs(bids_root, bids_run):
    out, code, before, after = bids_run
    assert code == 0
    assert after == before  # the raw dataset is not modified
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["BIDSVersion"] == bids.BIDS_VERSION
    assert description["Name"] and description["GeneratedBy"][0]["Name"] == "cmbunet"
    assert description["GeneratedBy"][0]["Version"] == "0.1.0"

    summary = pd.read_csv(out / "summary.csv").set_index("case")
    assert summary["status"].to_dict() == {
        "sub-101": "ok", "sub-102_ses-1": "ok", "dataset_description.json": "ignored",
        "participants.tsv": "ignored", "sub-101/anat/sub-101_T1w.nii.gz": "ignored"}
    assert summary.loc["sub-101/anat/sub-101_T1w.nii.gz", "error"].startswith("BIDS suffix T1w is not an input")
    assert summary.loc["participants.tsv", "error"] == "BIDS metadata, not an image"

    cases = {"sub-101": (bids_root / "sub-101/anat/sub-101_T2starw.nii.gz", out / "sub-101/anat/sub-101"),
             "sub-102_ses-1": (bids_root / "sub-102/ses-1/anat/sub-102_ses-1_T2starw.nii.gz",
                               out / "sub-102/ses-1/anat/sub-102_ses-1")}
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == sorted([".bidsignore", "dataset_description.json", "prediction_record.json", "summary.csv"] + [
        f"{stem.relative_to(out).as_posix()}_desc-cmb_{suffix}" for _, stem in cases.values()
        for suffix in ("mask.nii.gz", "probseg.nii.gz", "cmbs.tsv", "cmbs.json")])
    for case, (source, stem) in cases.items():
        src = read(source)
        mask_img, prob_img = read(Path(f"{stem}_desc-cmb_mask.nii.gz")), read(Path(f"{stem}_desc-cmb_probseg.nii.gz"))
        for img in (mask_img, prob_img):  # the input's geometry
            assert img.GetSize() == src.GetSize()
            assert img.GetSpacing() == src.GetSpacing()
            assert img.GetOrigin() == src.GetOrigin()
            # the NIfTI writer recomputes the float32 sform from the direction: equal to its last bit (1e-9)
            np.testing.assert_allclose(img.GetDirection(), src.GetDirection(), rtol=0, atol=1e-7)
        assert mask_img.GetPixelID() == sitk.sitkUInt8
        mask, prob = array(mask_img), array(prob_img)
        np.testing.assert_array_equal(mask, prob >= 0.5)
        labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
        table = pd.read_csv(f"{stem}_desc-cmb_cmbs.tsv", sep="\t", na_values=["n/a"], keep_default_na=False)
        assert list(table.columns) == CMB_COLUMNS
        assert len(table) == n >= 1 and summary.loc[case, "num_cmbs"] == n
        assert table["num_voxels"].sum() == mask.sum()
        world = np.array([src.TransformContinuousIndexToPhysicalPoint([float(v) for v in ijk])
                          for ijk in table[["i", "j", "k"]].to_numpy()])
        assert np.abs(world - table[["x_mm", "y_mm", "z_mm"]].to_numpy()).max() < max(src.GetSpacing()) * 3 ** 0.5
        sidecar = json.loads(Path(f"{stem}_desc-cmb_cmbs.json").read_text())
        assert set(CMB_COLUMNS) <= set(sidecar) and sidecar["x_mm"]["Units"] == "mm"


def test_bids_candidates_are_a_tsv_beside_the_mask(bids_root, model, tmp_path):
    out = tmp_path / "cmbunet"
    assert main(["-i", str(bids_root), "-o", str(out), "-m", str(model), "--output-format", "bids",
                 "--save-candidates", "-npp", "0"]) == 0
    table = pd.read_csv(out / "sub-101/anat/sub-101_desc-cmb_candidates.tsv", sep="\t")
    summary = pd.read_csv(out / "summary.csv").set_index("case")
    assert len(table) == summary.loc["sub-101", "num_candidates"]
    assert table["kept"].sum() == summary.loc["sub-101", "num_kept"]


def test_bids_rerun_skips_finished_cases(bids_root, model, bids_run):
    out, _, before, _ = bids_run
    mask = out / "sub-102/ses-1/anat/sub-102_ses-1_desc-cmb_mask.nii.gz"
    stamp = mask.stat().st_mtime_ns
    assert main(["-i", str(bids_root), "-o", str(out), "-m", str(model), "--output-format", "bids",
                 "--save_probabilities", "-npp", "0"]) == 0
    summary = pd.read_csv(out / "summary.csv")
    assert summary.loc[summary["status"] != "ignored", "status"].str.startswith("skipped").all()
    assert mask.stat().st_mtime_ns == stamp and tree_state(bids_root) == before


def test_bids_output_refuses_other_datasets_and_non_bids_cases(bids_root, model, tmp_path, capsys):
    # -o on the raw dataset itself: its dataset_description.json is never replaced
    before = tree_state(bids_root)
    assert main(["-i", str(bids_root), "-o", str(bids_root), "-m", str(model), "--output-format", "bids"]) == 2
    assert "belongs to another dataset" in capsys.readouterr().err
    assert tree_state(bids_root) == before
    # a CASE_0000 file has no BIDS entities: it fails, named, and nothing is written for it
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(bids_root / "sub-101/anat/sub-101_T2starw.nii.gz", flat / "scan_0000.nii.gz")
    out = tmp_path / "out"
    assert main(["-i", str(flat), "-o", str(out), "-m", str(model), "--output-format", "bids"]) == 1
    summary = pd.read_csv(out / "summary.csv")
    assert summary["status"].tolist() == ["failed"]
    assert "case id scan is not made of BIDS entities" in summary["error"].iloc[0]
    assert sorted(p.name for p in out.iterdir()) == [".bidsignore", "dataset_description.json",
                                                  "prediction_record.json", "summary.csv"]


def test_bids_input_listing(tmp_path):
    """Suffixes, parts, entities, flat files, single files, duplicates and clashes, without predicting."""
    root = tmp_path / "ds"
    (root / "sub-01" / "ses-a" / "anat").mkdir(parents=True)
    (root / "sub-02" / "anat").mkdir(parents=True)
    (root / "sub-03" / "anat").mkdir(parents=True)
    (root / "sub-04").mkdir()
    (root / "derivatives").mkdir()
    (root / "dataset_description.json").write_text("{}")
    files = ["sub-01/ses-a/anat/sub-01_ses-a_acq-3D_run-1_T2starw.nii.gz",
             "sub-01/ses-a/anat/sub-01_ses-a_acq-3D_run-1_part-phase_T2starw.nii.gz",
             "sub-02/anat/sub-02_T2starw.nii.gz", "sub-02/anat/sub-02_T2star.nii",  # two files for one channel
             "sub-02/anat/sub-02_T1w.nii.gz", "sub-03/anat/sub-03_swi.nii.gz",
             "sub-04/sub-04_space-T2S_desc-masked_T2S.nii.gz", "sub-04_T2starw.nii.gz",  # VALDO and BIDS: clash
             "sub-05_part-mag_T2star.nii.gz"]  # flat BIDS file, magnitude part
    for name in files:
        (root / name).write_bytes(b"")
    listed = find_input_cases(root, T2S, with_ignored=True)
    entries = {c.case: c for c in listed}
    assert entries["sub-01_ses-a_acq-3D_run-1"].ok
    assert entries["sub-01_ses-a_acq-3D_run-1"].images == (root / files[0],)
    assert entries["sub-01/ses-a/anat/sub-01_ses-a_acq-3D_run-1_part-phase_T2starw.nii.gz"].ignored.startswith("part-phase")
    assert "2 files for channel T2S (T2starw or T2star) of sub-02" in entries["sub-02"].error
    assert entries["sub-02/anat/sub-02_T1w.nii.gz"].ignored.startswith("BIDS suffix T1w")
    assert entries["sub-03/anat/sub-03_swi.nii.gz"].ignored.startswith("BIDS suffix swi")
    assert entries["sub-03"].ignored.startswith("subject folder holds no image the model reads")
    assert "given both as VALDO and as BIDS files" in entries["sub-04"].error
    assert entries["sub-05_part-mag"].ok
    assert entries["derivatives"].ignored == "BIDS derivatives folder; only sub-* subject folders are read"
    assert entries["dataset_description.json"].ignored == "BIDS metadata, not an image"
    assert len(listed) == 11 and [c.case for c in listed].count("sub-04") == 2  # one failed line per naming
    # an SWI model reads the swi file (and VALDO T2S files), not T2starw; a two-channel model pairs T2starw and
    # T1w of the same entities
    assert [c.case for c in find_input_cases(root, {"0": "SWI"})] == ["sub-03", "sub-04"]
    two = {c.case: c for c in find_input_cases(root, {"0": "T2S", "1": "T1"})}
    assert "missing channel file(s) sub-01_ses-a_acq-3D_run-1_T1w.nii.gz" in two["sub-01_ses-a_acq-3D_run-1"].error
    # one file: its entities are the case id
    single = find_input_cases(root / files[0], T2S)
    assert [(c.case, c.images) for c in single] == [("sub-01_ses-a_acq-3D_run-1", (root / files[0],))]


def test_bids_suffixes_of_model_channels():
    for name in ("T2S", "T2*", "t2star", "T2starw"):
        assert bids_suffixes(name) == ("T2starw", "T2star")
    assert [bids_suffixes(n) for n in ("SWI", "T1", "T2", "FLAIR", "T1w")] == [
        ("swi",), ("T1w",), ("T2w",), ("FLAIR",), ("T1w",)]


@pytest.mark.parametrize("case, expected", [
    ("sub-01", "sub-01/anat/sub-01_desc-cmb"),
    ("sub-01_ses-2_acq-3D_run-1", "sub-01/ses-2/anat/sub-01_ses-2_acq-3D_run-1_desc-cmb"),
    ("sub-01_desc-masked", "sub-01/anat/sub-01_desc-maskedcmb"),
])
def test_bids_output_names(tmp_path, case, expected):
    paths = bids.case_paths(tmp_path, case, save_probabilities=False)
    assert paths["mask"] == tmp_path / f"{expected}_mask.nii.gz"
    assert paths["cmbs"] == tmp_path / f"{expected}_cmbs.tsv" and paths["probseg"] is None
    assert bids.bids_entities("synth_003") is None and bids.bids_entities("sub-") is None
