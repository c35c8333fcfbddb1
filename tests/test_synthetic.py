"""Tests of the synthetic data generator: determinism, geometry, labels vs truth, contrast, layouts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from cmbunet.imageio import SimpleITKIO
from cmbunet.synthetic import synthesize_case, write_dataset
from cmbunet.synthetic.cli import main as cli_main

STRUCT26 = np.ones((3, 3, 3), dtype=bool)


def test_same_seed_identical_different_seed_differs():
    a, b, c = synthesize_case(3), synthesize_case(3), synthesize_case(4)
    assert np.array_equal(a.images["T2S"], b.images["T2S"]) and np.array_equal(a.label, b.label)
    assert a.props == b.props
    assert a.props["shape"] != c.props["shape"] or not np.array_equal(a.images["T2S"], c.images["T2S"])


def test_label_components_match_truth():
    case = synthesize_case(11, num_cmbs=6)
    comps, n = ndimage.label(case.label, STRUCT26)
    assert n == 6 == len(case.cmbs)
    centres = np.array(ndimage.center_of_mass(case.label, comps, range(1, n + 1)))
    truth = np.array([c["center_voxel"] for c in case.cmbs])
    d = np.abs(centres[:, None, :] - truth[None, :, :]).max(axis=-1)
    assert np.all(d.min(axis=1) <= 1.0)


def test_raw_layout_cli(tmp_path):
    out = tmp_path / "Dataset001_Synthetic"
    assert cli_main(["-o", str(out), "--cases", "2", "--test-cases", "1", "--seed", "5"]) == 0
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "T2S"} and ds["numTraining"] == 2 and ds["file_ending"] == ".nii.gz"
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["synth_000_0000.nii.gz", "synth_001_0000.nii.gz"]
    assert (out / "labelsTs" / "synth_002.nii.gz").is_file()
    img, props = SimpleITKIO.read_images([out / "imagesTr" / "synth_000_0000.nii.gz"])
    seg, _ = SimpleITKIO.read_seg(out / "labelsTr" / "synth_000.nii.gz")
    truth = json.loads((out / "synthetic_truth.json").read_text())["cases"]["synth_000"]
    assert ndimage.label(seg, STRUCT26)[1] == len(truth["cmbs"])
    assert list(img.shape[1:]) == props["shape"] == truth["shape"]
