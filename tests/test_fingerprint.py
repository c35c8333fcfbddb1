"""Fingerprint of a small raw dataset written as real NIfTI files with known, planted CMBs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cmbunet.errors import InputError
from cmbunet.imageio import SimpleITKIO
from cmbunet.plans.fingerprint import (
    cmb_components,
    extract_fingerprint,
    load_fingerprint,
    save_fingerprint,
)
from cmbunet.plans.planner import plan_experiment
from cmbunet.utilities.geometry import mask_bbox


def _props(shape, spacing):
    return {"spacing": list(spacing), "origin": [0.0, 0.0, 0.0], "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1], "shape": list(shape)}


def _write_case(root: Path, case: str, image: np.ndarray, label: np.ndarray, spacing) -> None:
    props = _props(image.shape, spacing)
    SimpleITKIO.write(image.astype(np.float32), root / "imagesTr" / f"{case}_0000.nii.gz", props)
    SimpleITKIO.write(label, root / "labelsTr" / f"{case}.nii.gz", props)


@pytest.fixture(scope="module")
def raw_dataset(tmp_path_factory) -> Path:
    """Two cases. Brain = a box with values 100 (lower x half) and 200 (upper x half); CMBs planted in the label.

    case_a (30x28x12 at 0.5x0.5x1.0): brain [5,25)x[4,24)x[2,10) = 20x20x8 = 3200 voxels;
      a 3x3x2 cube at [10,13)x[10,13)x[4,6) and two voxels touching only at a corner (26-connected: one CMB
      of 2 voxels, extent 2x2x2); one NaN voxel inside the brain (read back as 0 from NIfTI).
    case_b (20x20x10 at 0.6x0.6x2.0): brain [2,18)x[2,18)x[1,9) = 16x16x8 = 2048 voxels; no CMB; label float
      with values 0.44 (background after rounding to 1 decimal).
    """
    root = tmp_path_factory.mktemp("raw") / "Dataset900_Fp"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2S"}, "labels": {"background": 0, "CMB": 1},
                                                    "numTraining": 2, "file_ending": ".nii.gz"}))
    img = np.zeros((30, 28, 12), np.float32)
    img[5:15, 4:24, 2:10] = 100.0
    img[15:25, 4:24, 2:10] = 200.0
    img[20, 10, 5] = np.nan  # SimpleITK reads a NaN stored in NIfTI as 0 -> background
    lab = np.zeros(img.shape, np.uint8)
    lab[10:13, 10:13, 4:6] = 1
    lab[18, 18, 7] = 1
    lab[19, 19, 8] = 1
    _write_case(root, "case_a", img, lab, (0.5, 0.5, 1.0))
    img_b = np.zeros((20, 20, 10), np.float32)
    img_b[2:10, 2:18, 1:9] = 100.0
    img_b[10:18, 2:18, 1:9] = 200.0
    lab_b = np.full(img_b.shape, 0.44, np.float32)
    _write_case(root, "case_b", img_b, lab_b, (0.6, 0.6, 2.0))
    return root


@pytest.fixture(scope="module")
def fingerprint(raw_dataset) -> dict:
    return extract_fingerprint(raw_dataset)


def test_case_geometry_and_crop(fingerprint):
    a, b = fingerprint["cases"]
    assert a["case"] == "case_a" and b["case"] == "case_b"
    assert a["spacing"] == pytest.approx([0.5, 0.5, 1.0]) and b["spacing"] == pytest.approx([0.6, 0.6, 2.0])
    assert a["shape"] == [30, 28, 12] and b["shape"] == [20, 20, 10]
    assert a["crop_bbox"] == [[5, 25], [4, 24], [2, 10]]
    assert a["shape_after_crop"] == [20, 20, 8] and b["shape_after_crop"] == [16, 16, 8]
    assert a["foreground_voxels"] == 3200 - 1 and b["foreground_voxels"] == 2048


def test_cmbs_counts_volumes_extents(fingerprint):
    cmbs = sorted(fingerprint["cmbs"], key=lambda c: -c["volume_vox"])
    assert [c["case"] for c in cmbs] == ["case_a", "case_a"]
    cube, pair = cmbs
    assert cube["volume_vox"] == 18 and cube["volume_mm3"] == pytest.approx(18 * 0.25)
    assert cube["bbox"] == [[10, 13], [10, 13], [4, 6]]
    assert cube["extent_vox"] == [3, 3, 2] and cube["extent_mm"] == pytest.approx([1.5, 1.5, 2.0])
    assert cube["center_vox"] == pytest.approx([11.0, 11.0, 4.5])
    assert pair["volume_vox"] == 2 and pair["extent_vox"] == [2, 2, 2]
    assert pair["center_vox"] == pytest.approx([18.5, 18.5, 7.5])
    s = fingerprint["summary"]
    assert s["cmbs_per_case"] == {"case_a": 2, "case_b": 0}
    assert s["total_cmbs"] == 2 and s["cases_with_cmbs"] == 1 and s["num_cases"] == 2
    assert s["median_spacing"] == pytest.approx([0.55, 0.55, 1.5])
    assert s["median_cmb_volume_mm3"] == pytest.approx((18 + 2) / 2 * 0.25)


def test_foreground_intensities_all_voxels(fingerprint):
    st = fingerprint["foreground_intensity_properties_per_channel"]["0"]
    # case_a: 1600 x 100 and 1599 x 200 (NaN voxel dropped); case_b: 1024 x 100 and 1024 x 200
    values = np.concatenate([np.full(1600, 100.0), np.full(1599, 200.0), np.full(1024, 100.0), np.full(1024, 200.0)])
    assert st["num_samples"] == values.size
    assert st["mean"] == pytest.approx(values.mean()) and st["std"] == pytest.approx(values.std())
    assert st["min"] == 100.0 and st["max"] == 200.0
    assert st["percentile_00_5"] == 100.0 and st["percentile_99_5"] == 200.0


def test_sampling_cap_is_per_case_and_seeded(raw_dataset):
    fp1 = extract_fingerprint(raw_dataset, max_foreground_samples=1000, seed=3)
    fp2 = extract_fingerprint(raw_dataset, max_foreground_samples=1000, seed=3)
    st = fp1["foreground_intensity_properties_per_channel"]["0"]
    assert st["num_samples"] == 1000  # 500 per case
    assert 100.0 < st["mean"] < 200.0
    assert st == fp2["foreground_intensity_properties_per_channel"]["0"]


def test_multiprocess_equals_single(raw_dataset, fingerprint):
    fp2 = extract_fingerprint(raw_dataset, num_processes=2)
    assert fp2 == fingerprint


def test_save_load_and_plan(tmp_path, fingerprint):
    path = tmp_path / "dataset_fingerprint.json"
    save_fingerprint(fingerprint, path)
    loaded = load_fingerprint(path)
    assert loaded["cases"] == fingerprint["cases"]
    plans = plan_experiment(loaded, {"channel_names": {"0": "T2S"}}, preset="tiny")
    assert plans.target_spacing == pytest.approx([0.55, 0.55, 1.5])
    assert plans.cmb_box.num_cmbs == 2


def test_components_26_connectivity():
    mask = np.zeros((6, 6, 6), np.uint8)
    mask[1, 1, 1] = mask[2, 2, 2] = 1  # corner contact: one component
    mask[4, 4, 4] = 1  # separate
    comps = cmb_components(mask, (1.0, 2.0, 3.0))
    assert len(comps) == 2
    assert sorted(c["volume_vox"] for c in comps) == [1, 2]
    single = [c for c in comps if c["volume_vox"] == 1][0]
    assert single["extent_mm"] == pytest.approx([1.0, 2.0, 3.0]) and single["volume_mm3"] == pytest.approx(6.0)
    assert cmb_components(np.zeros((3, 3, 3), np.uint8), (1, 1, 1)) == []


def test_nonfinite_voxels_are_background(tmp_path):
    """MHA keeps NaN/inf on disk (NIfTI reads them as 0), so the non-finite path is exercised with .mha files."""
    root = tmp_path / "Dataset901_Nan"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2S", "1": "T1"}, "labels": {"background": 0, "CMB": 1},
                                                    "numTraining": 1, "file_ending": ".mha"}))
    t2s = np.zeros((10, 10, 6), np.float32)
    t2s[2:8, 2:8, 1:5] = 50.0  # 144 voxels
    t2s[3, 3, 2] = np.nan
    t2s[0, 0, 0] = np.inf  # outside the brain: must not extend the crop
    t1 = np.where(np.isfinite(t2s) & (t2s != 0), 10.0, 0.0).astype(np.float32)
    props = _props(t2s.shape, (1.0, 1.0, 1.0))
    SimpleITKIO.write(t2s, root / "imagesTr" / "c_0000.mha", props)
    SimpleITKIO.write(t1, root / "imagesTr" / "c_0001.mha", props)
    lab = np.zeros(t2s.shape, np.uint8)
    lab[5, 5, 2] = 1
    SimpleITKIO.write(lab, root / "labelsTr" / "c.mha", props)
    fp = extract_fingerprint(root)
    case = fp["cases"][0]
    assert case["nonfinite_voxels"] == 2 and fp["summary"]["nonfinite_voxels"] == 2
    assert case["crop_bbox"] == [[2, 8], [2, 8], [1, 5]] and case["foreground_voxels"] == 143
    stats = fp["foreground_intensity_properties_per_channel"]
    assert stats["0"]["mean"] == 50.0 and stats["0"]["num_samples"] == 143
    assert stats["1"]["mean"] == 10.0 and np.isfinite(stats["0"]["std"])


def test_nonzero_bbox_empty_keeps_whole_image():
    assert mask_bbox(np.zeros((4, 5, 6), bool)) == [[0, 4], [0, 5], [0, 6]]


def test_errors_name_the_file(tmp_path, raw_dataset):
    with pytest.raises(InputError, match="dataset.json"):
        extract_fingerprint(tmp_path)
    bad = tmp_path / "fp.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="fp.json"):
        load_fingerprint(bad)
    with pytest.raises(InputError, match="does not exist"):
        load_fingerprint(tmp_path / "missing.json")


def test_synthetic_dataset_matches_its_truth(tmp_path):
    """The generator's ground truth (CMB count and voxel counts per case) is what the fingerprint measures."""
    from cmbunet.synthetic.writer import write_dataset

    root = write_dataset(tmp_path / "Dataset950_Synth", 4, layout="raw", seed=0, size="small")
    truth = json.loads((root / "synthetic_truth.json").read_text())["cases"]
    fp = extract_fingerprint(root)
    for record in fp["cases"]:
        t = truth[record["case"]]
        assert record["spacing"] == pytest.approx(t["spacing"], rel=1e-6)
        assert record["shape"] == t["shape"]
        assert record["num_cmbs"] == t["num_cmbs"]
        measured = sorted(c["volume_vox"] for c in fp["cmbs"] if c["case"] == record["case"])
        assert measured == sorted(c["num_voxels"] for c in t["cmbs"])
        assert all(s < f for s, f in zip(record["shape_after_crop"], record["shape"]))  # background is cropped
    assert fp["summary"]["total_cmbs"] == sum(t["num_cmbs"] for t in truth.values() if t["split"] == "train") > 0
