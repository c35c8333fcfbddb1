"""Tests of cmbunet_convert_valdo on a small synthetic VALDO task-2 tree."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from cmbunet.dataset.convert_valdo import convert_valdo, main, valdo_image_name, valdo_label_name
from cmbunet.dataset.integrity import count_nonfinite_nifti, verify_dataset_integrity
from cmbunet.dataset.raw_dataset import list_image_cases, list_training_cases
from cmbunet.errors import InputError
from cmbunet.imageio.reader_writer import SimpleITKIO
from cmbunet.synthetic import write_dataset
from cmbunet.utilities.file_io import file_sha256

MODS = ("T2S", "T1")
NAN_VOXELS = 5  # set to NaN/inf in sub-101's T2S on top of what the generator put there


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def valdo(tmp_path_factory) -> Path:
    """3 subjects: sub-101 with extra NaN/inf, sub-102 with a 0/1/2 label, sub-103 without a label (test case)."""
    root = write_dataset(tmp_path_factory.mktemp("valdo") / "valdo", 3, layout="valdo", seed=0, size="small")
    t2s = root / "sub-101" / valdo_image_name("sub-101", "T2S")
    img, props = SimpleITKIO.read_seg(t2s)
    brain = np.argwhere(img > 0)
    for i, v in enumerate([np.nan] * 3 + [np.inf, -np.inf]):
        img[tuple(brain[i * 97])] = v
    SimpleITKIO.write(img.astype(np.float32), t2s, props)
    lab_path = root / "sub-102" / valdo_label_name("sub-102")
    lab, props = SimpleITKIO.read_seg(lab_path)
    lab[lab == 1] = 2
    lab[2:4, 2:4, 2:4] = 1
    SimpleITKIO.write(lab.astype(np.uint8), lab_path, props)
    (root / "sub-103" / valdo_label_name("sub-103")).unlink()
    return root


@pytest.fixture(scope="module")
def converted(valdo, tmp_path_factory) -> tuple[Path, dict, dict[str, str], dict[str, str]]:
    before = _hashes(valdo)
    out = tmp_path_factory.mktemp("raw") / "Dataset001_VALDO"
    report = convert_valdo(valdo, out, modalities=MODS)
    return out, report, before, _hashes(valdo)


def _assert_same_geometry(a: Path, b: Path) -> None:
    """Same size, and spacing/origin/direction equal to 1e-6 (NIfTI stores the orientation as float32)."""
    ia, ib = sitk.ReadImage(str(a)), sitk.ReadImage(str(b))
    assert ia.GetSize() == ib.GetSize()
    for get in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(ia, get)(), getattr(ib, get)(), rtol=0, atol=1e-6, err_msg=f"{get} {a} {b}")


def test_layout_and_dataset_json(converted):
    out, report, _, _ = converted
    assert json.loads((out / "dataset.json").read_text()) == {
        "name": "Dataset001_VALDO",
        "description": "VALDO 2021 task 2 (cerebral microbleeds), converted by cmbunet_convert_valdo",
        "channel_names": {"0": "T2S", "1": "T1"}, "labels": {"background": 0, "CMB": 1},
        "numTraining": 2, "numTest": 1, "file_ending": ".nii.gz"}
    assert list(list_training_cases(out)) == ["sub-101", "sub-102"]
    assert list(list_image_cases(out / "imagesTs", ".nii.gz", 2)) == ["sub-103"]
    assert (report["num_training"], report["num_test"], report["num_skipped"]) == (2, 1, 0)
    verify_dataset_integrity(out)


def test_nans_replaced_and_reported_per_case(valdo, converted):
    out, report, _, _ = converted
    for case in ("sub-101", "sub-102", "sub-103"):
        expected = sum(count_nonfinite_nifti(valdo / case / valdo_image_name(case, m)) for m in MODS)
        assert report["cases"][case]["nonfinite_replaced"] == expected
    assert report["cases"]["sub-101"]["nonfinite_replaced"] >= NAN_VOXELS
    assert report["nonfinite_replaced"] == sum(r["nonfinite_replaced"] for r in report["cases"].values())
    for f in (out / "imagesTr").iterdir():
        assert count_nonfinite_nifti(f) == 0


def test_images_equal_input_with_nans_as_zero_and_geometry_copied(valdo, converted):
    out, _, _, _ = converted
    for case, folder in (("sub-101", "imagesTr"), ("sub-103", "imagesTs")):
        for c, m in enumerate(MODS):
            src, dst = valdo / case / valdo_image_name(case, m), out / folder / f"{case}_{c:04d}.nii.gz"
            _assert_same_geometry(src, dst)
            a, b = SimpleITKIO.read_seg(src)[0], SimpleITKIO.read_seg(dst)[0]
            assert b.dtype == np.float32
            np.testing.assert_array_equal(np.nan_to_num(a, nan=0, posinf=0, neginf=0), b)


def test_label_binarised(valdo, converted):
    out, report, _, _ = converted
    src = SimpleITKIO.read_seg(valdo / "sub-102" / valdo_label_name("sub-102"))[0]
    dst = SimpleITKIO.read_seg(out / "labelsTr" / "sub-102.nii.gz")[0]
    assert dst.dtype == np.uint8 and set(np.unique(dst).tolist()) == {0, 1}
    np.testing.assert_array_equal(dst, (src >= 1).astype(np.uint8))
    assert report["cases"]["sub-102"]["label_voxels_changed"] == int(np.count_nonzero(src == 2)) > 0
    assert report["cases"]["sub-102"]["label_values"] == [0, 1, 2]
    assert report["cases"]["sub-101"]["label_voxels_changed"] == 0
    assert report["labels_binarised"] == 1
    _assert_same_geometry(valdo / "sub-102" / valdo_label_name("sub-102"), out / "labelsTr" / "sub-102.nii.gz")


def test_input_tree_unchanged(converted):
    _, _, before, after = converted
    assert before == after and len(before) == 12  # 3 subjects x 3 contrasts + 2 labels + truth file


def test_idempotent_and_overwrite(valdo, tmp_path):
    out = tmp_path / "Dataset002_VALDO"
    convert_valdo(valdo, out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    again = convert_valdo(valdo, out)
    assert again["num_skipped"] == 3 and again["nonfinite_replaced"] == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")} == mtimes
    (out / "labelsTr" / "sub-102.nii.gz").unlink()  # an interrupted run: that case is redone, the others kept
    partial = convert_valdo(valdo, out)
    assert partial["num_skipped"] == 2 and partial["cases"]["sub-102"]["skipped"] is False
    # a different channel set must not silently mix with the earlier conversion
    with pytest.raises(InputError, match="--overwrite"):
        convert_valdo(valdo, out, modalities=("T2S", "T2"))
    rebuilt = convert_valdo(valdo, out, modalities=("T2S", "T2"), overwrite=True)
    assert rebuilt["num_skipped"] == 0
    verify_dataset_integrity(out)
    # back to one channel: the now-stale _0001 files are removed by --overwrite
    convert_valdo(valdo, out, modalities=("T2S",), overwrite=True)
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["sub-101_0000.nii.gz", "sub-102_0000.nii.gz"]
    verify_dataset_integrity(out)


def test_multiprocess_same_output(valdo, converted, tmp_path):
    out1, report1, _, _ = converted
    out2 = tmp_path / "Dataset003_VALDO"
    report2 = convert_valdo(valdo, out2, modalities=MODS, num_processes=2)
    assert report2["cases"] == report1["cases"]
    for f in sorted(out1.rglob("*.nii.gz")):
        a = SimpleITKIO.read_seg(f)[0]
        np.testing.assert_array_equal(a, SimpleITKIO.read_seg(out2 / f.relative_to(out1))[0])


def test_cli_converts_and_verifies(valdo, tmp_path, capsys):
    assert main(["-i", str(valdo), "-d", "7", "--raw-root", str(tmp_path), "--modalities", "T2S", "-np", "1"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "Dataset007_VALDO" / "imagesTr" / "sub-101_0000.nii.gz").is_file()
    assert "training cases: 2, test cases (no label, in imagesTs): 1" in out
    assert "integrity check passed" in out
    assert "sub-101:" in out and "NaN/inf voxel(s) set to 0" in out
    assert "sub-102: label values [0, 1, 2] binarised" in out


def test_cli_uses_environment_root(valdo, tmp_path, monkeypatch):
    monkeypatch.setenv("CMBUNET_RAW", str(tmp_path / "rawroot"))
    assert main(["-i", str(valdo), "-d", "12", "-n", "Mine", "--skip-verify"]) == 0
    assert (tmp_path / "rawroot" / "Dataset012_Mine" / "dataset.json").is_file()


def _cli_error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_cli_errors(valdo, tmp_path, capsys):
    raw = ["--raw-root", str(tmp_path / "raw"), "-d", "1"]
    err = _cli_error(["-i", str(tmp_path / "missing"), *raw], capsys)
    assert err.startswith("error: ") and "missing: VALDO input folder does not exist" in err
    (tmp_path / "empty").mkdir()
    assert "contains no sub-* subject folders" in _cli_error(["-i", str(tmp_path / "empty"), *raw], capsys)

    broken = tmp_path / "broken"
    shutil.copytree(valdo, broken)
    (broken / "sub-102" / valdo_image_name("sub-102", "T1")).unlink()
    err = _cli_error(["-i", str(broken), "--modalities", "T2S", "T1", *raw], capsys)
    assert f"{broken / 'sub-102' / valdo_image_name('sub-102', 'T1')}: requested modality file is missing" in err
    assert not (tmp_path / "raw").exists()  # nothing written before the check

    (broken / "sub-101" / valdo_image_name("sub-101", "T2S")).write_bytes(b"not an image at all")
    err = _cli_error(["-i", str(broken), *raw], capsys)
    assert valdo_image_name("sub-101", "T2S") in err and "cannot be read" in err

    err = _cli_error(["-i", str(valdo), "-d", "1", "--raw-root", str(valdo / "raw")], capsys)
    assert "inside the VALDO input folder" in err
    assert "only contain letters" in _cli_error(["-i", str(valdo), "-n", "bad name", *raw], capsys)
