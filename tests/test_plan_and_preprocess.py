"""End to end: ``cmbunet_plan_and_preprocess`` on a small synthetic raw dataset."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from cmbunet.errors import InputError
from cmbunet.plan_and_preprocess import main, preprocess_cases
from cmbunet.preprocessing.preprocessor import load_preprocessed_case
from cmbunet.synthetic.writer import write_dataset
from cmbunet.utilities.file_io import file_sha256, load_json

NAME = "Dataset007_Syn"
NUM_CASES = 5
PROPERTY_KEYS = {
    "case", "original_spacing", "original_origin", "original_direction", "original_shape", "crop_bbox",
    "shape_after_crop", "target_spacing", "shape_after_resampling", "channel_stats", "nonfinite_replaced",
    "cmbs", "vanished_cmbs",
}


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    write_dataset(root / NAME, NUM_CASES, layout="raw", seed=3, size="small")
    return root


@pytest.fixture(scope="module")
def first_run(raw_root, tmp_path_factory):
    pre_root = tmp_path_factory.mktemp("preprocessed")
    before = _hashes(raw_root)
    argv = ["-d", "7", "--preset", "tiny", "-np", "1", "--raw-root", str(raw_root), "--preprocessed-root", str(pre_root)]
    rc = main(argv)
    return rc, pre_root / NAME, before, argv


def test_outputs_follow_the_contract(first_run, raw_root, capsys):
    rc, out, before, _ = first_run
    assert rc == 0
    for f in ("dataset.json", "dataset_fingerprint.json", "plans.json", "splits_final.json"):
        assert (out / f).is_file(), f
    assert load_json(out / "dataset.json") == load_json(raw_root / NAME / "dataset.json")
    plans = load_json(out / "plans.json")
    assert plans["preset"] == "tiny" and plans["dataset_name"] == NAME
    cases = sorted(p.name[: -len(".json")] for p in (out / "data").glob("*.json"))
    assert len(cases) == NUM_CASES
    splits = load_json(out / "splits_final.json")
    assert sorted(c for f in splits for c in f["val"]) == cases
    for case in cases:
        data, seg, brain, props = load_preprocessed_case(out, case)
        assert PROPERTY_KEYS <= props.keys()
        assert props["case"] == case and props["target_spacing"] == plans["target_spacing"]
        assert data.dtype == np.float32 and data.shape == (1, *props["shape_after_resampling"])
        assert seg.shape == brain.shape == data.shape[1:]
        assert np.count_nonzero(data[:, ~brain]) == 0
        assert len(props["cmbs"]) == ndi.label(seg, np.ones((3, 3, 3)))[1]
        assert int(seg.sum()) == sum(c["volume_voxels"] for c in props["cmbs"])
        fg = data[0][brain]
        assert abs(float(fg.mean())) < 0.2 and 0.7 < float(fg.std()) < 1.3
    # raw data untouched
    assert _hashes(raw_root) == before


def test_rerun_skips_and_plan_change_redoes(first_run, capsys):
    rc, out, _, argv = first_run
    assert rc == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "data").glob("*.npz")}
    capsys.readouterr()
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert f"0 case(s) preprocessed, {NUM_CASES} already up to date" in text
    assert {p.name: p.stat().st_mtime_ns for p in (out / "data").glob("*.npz")} == stamps

    # a different target spacing is a different plans hash: every case is redone on the new grid
    assert main(argv + ["--override", "target_spacing=[1.5,1.5,2.0]"]) == 0
    assert f"{NUM_CASES} case(s) preprocessed, 0 already up to date" in capsys.readouterr().out
    for js in (out / "data").glob("*.json"):
        props = load_json(js)
        assert props["target_spacing"] == [1.5, 1.5, 2.0]
    assert len({load_json(js)["plans_hash"] for js in (out / "data").glob("*.json")}) == 1


def test_broken_dataset_is_rejected_before_writing(raw_root, tmp_path, capsys):
    broken_root = tmp_path / "raw"
    shutil.copytree(raw_root / NAME, broken_root / NAME)
    bad = sorted((broken_root / NAME / "labelsTr").glob("*.nii.gz"))[1]
    bad.write_bytes(b"this is not a nifti file")
    pre_root = tmp_path / "pre"
    rc = main(["-d", NAME, "--verify_dataset_integrity", "--preset", "tiny", "-np", "1",
               "--raw-root", str(broken_root), "--preprocessed-root", str(pre_root)])
    err = capsys.readouterr().err
    assert rc != 0
    assert bad.name in err
    assert not pre_root.exists() or not any(pre_root.rglob("*"))


def test_failing_case_names_its_file(raw_root, tmp_path):
    """A worker reports its error as data (InputError does not pickle) and the run raises it with the file."""
    images = [raw_root / NAME / "imagesTr" / "missing_0000.nii.gz"]
    label = raw_root / NAME / "labelsTr" / "missing.nii.gz"
    with pytest.raises(InputError, match="missing_0000.nii.gz"):
        preprocess_cases([("missing", images, label, {}, tmp_path, "h")], num_processes=1)
    assert not any(tmp_path.iterdir())


def test_unknown_dataset_id(tmp_path, capsys):
    (tmp_path / "raw").mkdir()
    rc = main(["-d", "42", "--raw-root", str(tmp_path / "raw"), "--preprocessed-root", str(tmp_path / "pre")])
    assert rc == 2 and "42" in capsys.readouterr().err
