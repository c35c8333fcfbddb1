"""Tests of the raw dataset layer: dataset.json, case listing, the label rule and the integrity check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from cmbunet.dataset.integrity import count_nonfinite, count_nonfinite_nifti, verify_dataset_integrity
from cmbunet.dataset.raw_dataset import (
    binarise_label,
    list_image_cases,
    list_training_cases,
    load_dataset_json,
)
from cmbunet.errors import DatasetIntegrityError, InputError
from cmbunet.imageio.reader_writer import SimpleITKIO

SHAPE = (16, 14, 8)
PROPS = {"spacing": [0.9, 0.9, 2.0], "origin": [10.0, -5.0, 3.0], "direction": [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0],
         "shape": list(SHAPE)}


def _dataset_json(folder: Path, num_training: int, channels: int = 2, **extra) -> None:
    dj = {"channel_names": {str(i): n for i, n in enumerate(["T2S", "T1"][:channels])},
          "labels": {"background": 0, "CMB": 1}, "numTraining": num_training, "file_ending": ".nii.gz", **extra}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps(dj))


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(1, 100, SHAPE).astype(np.float32)


def _label(cmb: bool = True, value: int = 1) -> np.ndarray:
    lab = np.zeros(SHAPE, np.uint8)
    if cmb:
        lab[4:6, 4:6, 3:5] = value
    return lab


def _write_case(raw: Path, case: str, channels: int = 2, label: np.ndarray | None = None, props=PROPS) -> None:
    for c in range(channels):
        SimpleITKIO.write(_image(c), raw / "imagesTr" / f"{case}_{c:04d}.nii.gz", props)
    SimpleITKIO.write(_label() if label is None else label, raw / "labelsTr" / f"{case}.nii.gz", props)


def _good_dataset(raw: Path) -> Path:
    _dataset_json(raw, 3)
    _write_case(raw, "sub_b")
    _write_case(raw, "sub_a", label=_label(cmb=False))
    _write_case(raw, "sub_c")
    for c in range(2):
        SimpleITKIO.write(_image(c), raw / "imagesTs" / f"test_1_{c:04d}.nii.gz", PROPS)
    return raw


# --------------------------------------------------------------------------------------------- binarise_label


def test_binarise_label_rounds_to_one_decimal_like_the_valdo_metric():
    values = np.array([0.0, 0.04, 0.44, 0.45, 0.46, 0.5, 0.95, 1.0, 2.0, 255.0, np.nan, -1.0, np.inf])
    out = binarise_label(values)
    assert out.dtype == np.uint8
    assert out.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 1]


def test_binarise_label_integer_and_bool_inputs():
    assert binarise_label(np.array([0, 1, 2, 255], np.uint8)).tolist() == [0, 1, 1, 1]
    assert binarise_label(np.array([-3, 0, 1], np.int16)).tolist() == [0, 0, 1]
    assert binarise_label(np.array([True, False])).tolist() == [1, 0]
    vol = np.zeros((5, 6, 7), np.float32)
    vol[1, 2, 3] = 0.7
    out = binarise_label(vol)
    assert out.shape == (5, 6, 7) and out.sum() == 1 and out[1, 2, 3] == 1


# --------------------------------------------------------------------------------------------- dataset.json


def test_load_dataset_json_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="dataset.json is missing"):
        load_dataset_json(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(InputError, match=r"dataset\.json: is not valid JSON"):
        load_dataset_json(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2S"}, "labels": {"background": 0, "CMB": 1}}))
    with pytest.raises(InputError, match="numTraining, file_ending") as e:
        load_dataset_json(tmp_path)
    assert e.value.path == str(tmp_path / "dataset.json")
    _dataset_json(tmp_path, 1, labels={"background": 0, "CMB": 1, "vein": 2})
    with pytest.raises(InputError, match="labels must be"):
        load_dataset_json(tmp_path)
    _dataset_json(tmp_path, 1, channel_names={"1": "T2S"})
    with pytest.raises(InputError, match="channel_names keys"):
        load_dataset_json(tmp_path)
    _dataset_json(tmp_path, 4)
    assert load_dataset_json(tmp_path)["numTraining"] == 4


# --------------------------------------------------------------------------------------------- listing


def test_list_training_cases_sorted_in_channel_order(tmp_path):
    raw = _good_dataset(tmp_path / "Dataset001_Test")
    cases = list_training_cases(raw)
    assert list(cases) == ["sub_a", "sub_b", "sub_c"]
    assert cases["sub_b"]["images"] == [raw / "imagesTr" / "sub_b_0000.nii.gz", raw / "imagesTr" / "sub_b_0001.nii.gz"]
    assert cases["sub_b"]["label"] == raw / "labelsTr" / "sub_b.nii.gz"
    test = list_image_cases(raw / "imagesTs", ".nii.gz", 2)
    assert test == {"test_1": [raw / "imagesTs" / "test_1_0000.nii.gz", raw / "imagesTs" / "test_1_0001.nii.gz"]}


def test_listing_errors_name_case_and_file(tmp_path):
    raw = _good_dataset(tmp_path / "Dataset001_Test")
    (raw / "imagesTr" / "sub_b_0001.nii.gz").unlink()
    with pytest.raises(InputError, match="case 'sub_b' is missing channel 1") as e:
        list_training_cases(raw)
    assert e.value.path.endswith("sub_b_0001.nii.gz")
    _write_case(raw, "sub_b")
    (raw / "labelsTr" / "sub_c.nii.gz").unlink()
    with pytest.raises(InputError, match="label of training case 'sub_c' is missing"):
        list_training_cases(raw)
    with pytest.raises(InputError, match="does not exist"):
        list_image_cases(tmp_path / "nowhere", ".nii.gz", 1)


# --------------------------------------------------------------------------------------------- integrity


def test_integrity_passes_on_a_clean_dataset(tmp_path):
    verify_dataset_integrity(_good_dataset(tmp_path / "Dataset001_Test"))


def _write_sitk(img: sitk.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


@pytest.fixture()
def broken_dataset(tmp_path) -> Path:
    """A dataset with one instance of every problem the checker knows, each in its own file."""
    raw = tmp_path / "Dataset002_Broken"
    _dataset_json(raw, 99)
    tr, lab = raw / "imagesTr", raw / "labelsTr"
    _write_case(raw, "good")
    _write_case(raw, "nochannel")
    (tr / "nochannel_0001.nii.gz").unlink()                                     # missing channel file
    (tr / "notes.txt").write_text("hello")                                      # wrong ending
    SimpleITKIO.write(_image(0), tr / "good_0005.nii.gz", PROPS)                # unknown channel index
    _write_case(raw, "nolabel")
    (lab / "nolabel.nii.gz").unlink()                                           # label missing
    SimpleITKIO.write(_label(), lab / "orphan.nii.gz", PROPS)                   # label without images
    _write_case(raw, "Twin")
    _write_case(raw, "twin")                                                     # letter-case collision
    _write_case(raw, "good_0001")                                                # reads as channel 1 of 'good'
    _write_case(raw, "flat")
    _write_sitk(sitk.GetImageFromArray(np.ones((14, 16), np.float32)), tr / "flat_0000.nii.gz")   # 2D
    _write_case(raw, "fourd")
    _write_sitk(sitk.GetImageFromArray(np.ones((2, 8, 14, 16), np.float32), isVector=False), tr / "fourd_0001.nii.gz")  # 4D
    _write_case(raw, "corrupt")
    (tr / "corrupt_0000.nii.gz").write_bytes(b"\x1f\x8b this is not a gzip stream" * 10)           # unreadable
    _write_case(raw, "shape")
    SimpleITKIO.write(np.ones((16, 14, 9), np.float32), tr / "shape_0001.nii.gz", {**PROPS, "shape": [16, 14, 9]})
    _write_case(raw, "spacing")
    SimpleITKIO.write(_label(), lab / "spacing.nii.gz", {**PROPS, "spacing": [0.9, 0.9, 2.5]})
    _write_case(raw, "origin")
    SimpleITKIO.write(_image(1), tr / "origin_0001.nii.gz", {**PROPS, "origin": [10.0, -5.0, 3.5]})
    _write_case(raw, "direction")
    SimpleITKIO.write(_label(), lab / "direction.nii.gz", {**PROPS, "direction": [0, 1.0, 0, 1.0, 0, 0, 0, 0, 1.0]})
    _write_case(raw, "label2", label=_label(value=2))                            # non-binary label
    _write_case(raw, "label255", label=_label(value=255))
    _write_case(raw, "nan")
    img = _image(0)
    img[0, 0, :3] = np.nan
    img[1, 1, 1] = np.inf
    SimpleITKIO.write(img, tr / "nan_0000.nii.gz", PROPS)                        # 4 non-finite voxels
    _write_case(raw, "zero")
    SimpleITKIO.write(np.zeros(SHAPE, np.float32), tr / "zero_0001.nii.gz", PROPS)   # all zero
    (tr / "sub").mkdir()                                                         # unexpected folder
    SimpleITKIO.write(_image(0), raw / "imagesTs" / "t_0000.nii.gz", PROPS)     # test case missing channel 1
    return raw


EXPECTED_PROBLEMS = [
    ("imagesTr/nochannel_0001.nii.gz", "missing channel 1"),
    ("imagesTr/notes.txt", "does not end with the dataset's file_ending"),
    ("imagesTr/good_0005.nii.gz", "channel index 0005"),
    ("labelsTr/nolabel.nii.gz", "label of training case 'nolabel' is missing"),
    ("labelsTr/orphan.nii.gz", "label without images"),
    ("imagesTr", "Twin, twin differ only in letter case"),
    ("imagesTr", "'good_0001' is ambiguous with channel 0001 of case 'good'"),
    ("imagesTr/flat_0000.nii.gz", "is 2D"),
    ("imagesTr/fourd_0001.nii.gz", "is 4D"),
    ("imagesTr/corrupt_0000.nii.gz", "cannot be read"),
    ("imagesTr/shape_0001.nii.gz", "shape (16, 14, 9) differs"),
    ("labelsTr/spacing.nii.gz", "spacing"),
    ("imagesTr/origin_0001.nii.gz", "origin"),
    ("labelsTr/direction.nii.gz", "direction cosines differ"),
    ("labelsTr/label2.nii.gz", "not binary: contains value(s) 2;"),
    ("labelsTr/label255.nii.gz", "not binary: contains value(s) 255;"),
    ("imagesTr/nan_0000.nii.gz", "contains 4 NaN/inf voxel(s)"),
    ("imagesTr/zero_0001.nii.gz", "all zero"),
    ("imagesTr/sub", "unexpected sub-folder"),
    ("dataset.json", "numTraining is 99 but imagesTr holds 17 case(s)"),
    ("imagesTs/t_0001.nii.gz", "case 't' is missing channel 1"),
]


def _assert_all_listed(problems: list[tuple[str, str]], raw: Path) -> None:
    for rel, text in EXPECTED_PROBLEMS:
        path = str(raw / rel)
        assert any(f == path and text in p for f, p in problems), f"not reported: {rel}: {text}\n{problems}"


def test_integrity_lists_every_problem_with_its_file(broken_dataset):
    with pytest.raises(DatasetIntegrityError) as e:
        verify_dataset_integrity(broken_dataset)
    problems = e.value.problems
    _assert_all_listed(problems, broken_dataset)
    assert len(problems) == len(EXPECTED_PROBLEMS)   # no spurious complaints about the good files
    assert str(broken_dataset / "imagesTr" / "good_0000.nii.gz") not in {f for f, _ in problems}
    assert f"{len(problems)} problem(s)" in str(e.value)


def test_integrity_multiprocess_finds_the_same(broken_dataset):
    with pytest.raises(DatasetIntegrityError) as single:
        verify_dataset_integrity(broken_dataset)
    with pytest.raises(DatasetIntegrityError) as multi:
        verify_dataset_integrity(broken_dataset, num_processes=2)
    assert sorted(single.value.problems) == sorted(multi.value.problems)


def test_integrity_empty_dataset_and_no_cmb(tmp_path):
    empty = tmp_path / "Dataset003_Empty"
    _dataset_json(empty, 0)
    (empty / "imagesTr").mkdir()
    (empty / "labelsTr").mkdir()
    with pytest.raises(DatasetIntegrityError, match="dataset is empty"):
        verify_dataset_integrity(empty)
    no_cmb = tmp_path / "Dataset004_NoCMB"
    _dataset_json(no_cmb, 2)
    _write_case(no_cmb, "a", label=_label(cmb=False))
    _write_case(no_cmb, "b", label=_label(cmb=False))
    with pytest.raises(DatasetIntegrityError) as e:
        verify_dataset_integrity(no_cmb)
    assert e.value.problems == [(str(no_cmb / "labelsTr"), "no CMB in the whole dataset: every label is empty, nothing to learn from")]


def test_integrity_bad_dataset_json_and_missing_folders(tmp_path):
    raw = tmp_path / "Dataset005_X"
    raw.mkdir()
    with pytest.raises(DatasetIntegrityError) as e:
        verify_dataset_integrity(raw)
    assert e.value.problems[0][0] == str(raw / "dataset.json")
    _dataset_json(raw, 1)
    with pytest.raises(DatasetIntegrityError) as e:
        verify_dataset_integrity(raw)
    files = {f for f, _ in e.value.problems}
    assert {str(raw / "imagesTr"), str(raw / "labelsTr")} <= files


def test_nonfinite_count_sees_through_the_nifti_reader(tmp_path):
    """SimpleITK reads NaN/inf in NIfTI as 0; the count must come from the stored voxels."""
    arr = np.ones((6, 5, 4), np.float64)
    arr[0, 0, 0], arr[1, 2, 3], arr[5, 4, 3] = np.nan, np.inf, -np.inf
    props = {**PROPS, "shape": [6, 5, 4]}
    for name in ("a.nii.gz", "a.nii", "a.mha"):
        SimpleITKIO.write(arr, tmp_path / name, props)
        read, _ = SimpleITKIO.read_seg(tmp_path / name)
        assert count_nonfinite(tmp_path / name, read) == 3, name
    assert count_nonfinite_nifti(tmp_path / "a.mha") is None
    SimpleITKIO.write(np.ones((6, 5, 4), np.uint8), tmp_path / "b.nii.gz", props)
    assert count_nonfinite_nifti(tmp_path / "b.nii.gz") == 0
    (tmp_path / "c.nii.gz").write_bytes(b"garbage")
    assert count_nonfinite_nifti(tmp_path / "c.nii.gz") is None
