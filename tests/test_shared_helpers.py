"""The helpers that several layers share: bounding boxes, connected components, world coordinates, channel file
names, autocast, and the typed result of a case's prediction. The shared versions must give what the copies they
replace gave, bit for bit, and what ``acvl_utils`` gives under its conventions."""

from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd
import pytest
import torch
from acvl_utils.cropping_and_padding import bounding_boxes as acvl
from plan_helpers import make_plans
from scipy import ndimage

from cmbunet.inference.outputs import CMB_COLUMNS, CasePrediction, CaseOutputs, cmb_table, write_case
from cmbunet.inference.screening import score_box, screening_score_map
from cmbunet.networks import build_network
from cmbunet.utilities.autocast import autocast_context
from cmbunet.utilities.case_names import CHANNEL_STEM_RE, channel_file_name, image_stem
from cmbunet.utilities.components import (STRUCTURE_26, centre_table, component_boxes, component_maxima,
                                         find_components)
from cmbunet.utilities.geometry import (bounding_box_to_slice, mask_bbox, mask_bbox_or_none, voxel_to_world,
                                        world_to_voxel)

OBLIQUE = {"spacing": [0.6, 0.7, 2.5], "origin": [-10.0, 4.0, 30.0],
           "direction": [0.98, -0.17, 0.0, 0.17, 0.98, 0.0, 0.0, 0.0, 1.0], "shape": [30, 28, 12]}


def random_masks(count: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        shape = tuple(int(s) for s in rng.integers(4, 40, 3))
        yield rng.random(shape) < rng.choice([0.0, 0.0005, 0.01, 0.2])


# ------------------------------------------------------------------------------------------------ bounding boxes
def test_mask_bbox_is_acvl_utils_get_bbox_from_mask():
    masks = [*random_masks(), np.zeros((5, 6, 7), bool), np.ones((3, 4, 5), bool)]
    single = np.zeros((9, 8, 7), bool)
    single[8, 0, 3] = True
    for mask in [*masks, single]:
        box = mask_bbox(mask)
        assert box == acvl.get_bbox_from_mask(mask)
        assert all(type(v) is int for pair in box for v in pair)
        assert bounding_box_to_slice(box) == acvl.bounding_box_to_slice(box)
        assert mask_bbox_or_none(mask) == (box if mask.any() else None)
        if mask.any():
            assert mask[bounding_box_to_slice(box)].sum() == mask.sum()


# ------------------------------------------------------------------------------------------------ components
def test_components_equal_scipy_centres_boxes_and_counts_bit_for_bit():
    for mask in random_masks(seed=1):
        comps = find_components(mask)
        labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
        assert comps.count == n and np.array_equal(comps.labels, labels)
        if n == 0:
            assert comps.centres.shape == (0, 3) and comps.boxes().shape == (0, 3, 2)
            continue
        expected = np.asarray(ndimage.center_of_mass(mask, labels, np.arange(1, n + 1))).reshape(-1, 3)
        assert np.array_equal(comps.centres, expected)
        assert np.array_equal(comps.num_voxels, np.bincount(labels.ravel())[1:])
        boxes = [[[s.start, s.stop] for s in box] for box in ndimage.find_objects(labels)]
        assert component_boxes(labels, n).tolist() == boxes
        assert comps.ids.tolist() == list(range(1, n + 1))
        values = np.random.default_rng(n).normal(size=mask.shape)  # maxima over the labelled voxels only
        assert np.array_equal(component_maxima(values, labels, n),
                              np.asarray(ndimage.maximum(values, labels, comps.ids), dtype=float).reshape(-1))


def test_components_are_26_connected():
    mask = np.zeros((6, 6, 6), bool)
    mask[1, 1, 1] = mask[2, 2, 2] = True  # corner neighbours: one CMB
    mask[4, 4, 4] = True
    assert STRUCTURE_26.all() and find_components(mask).count == 2


def test_centre_table_rows_and_world_round_trip():
    centres = np.array([[3.2, 4.0, 5.6], [10.0, 1.0, 0.4]])
    table = centre_table([7, 9], centres, np.array([4, 1]), OBLIQUE)
    assert table["id"].tolist() == [7, 9] and table[["i", "j", "k"]].to_numpy().tolist() == [[3, 4, 6], [10, 1, 0]]
    np.testing.assert_allclose(table[["x_mm", "y_mm", "z_mm"]].to_numpy(), voxel_to_world(centres, OBLIQUE))
    np.testing.assert_allclose(table["volume_mm3"], np.array([4, 1]) * 0.6 * 0.7 * 2.5)
    np.testing.assert_allclose(world_to_voxel(voxel_to_world(centres, OBLIQUE), OBLIQUE), centres, atol=1e-12)
    assert list(centre_table([], np.zeros((0, 3)), np.zeros(0), OBLIQUE).columns) == list(table.columns)


def test_cmb_table_centres_are_those_of_center_of_mass():
    binary = np.zeros(OBLIQUE["shape"], np.uint8)
    binary[2:5, 3:5, 1:3] = 1
    binary[20, 20, 10] = binary[21, 21, 11] = 1
    prob = binary * np.float32(0.8)
    table = cmb_table(binary, prob, OBLIQUE)
    labels, n = ndimage.label(binary, structure=np.ones((3, 3, 3)))
    com = np.asarray(ndimage.center_of_mass(binary > 0, labels, np.arange(1, n + 1)))
    assert list(table.columns) == CMB_COLUMNS and table["num_voxels"].tolist() == [12, 2]
    assert np.array_equal(table[["x_mm", "y_mm", "z_mm"]].to_numpy(), voxel_to_world(com, OBLIQUE))
    assert table["segmentation_score"].tolist() == [pytest.approx(0.8)] * 2
    assert table["screening_score"].isna().all()


# ------------------------------------------------------------------------------------------------ file names
def test_channel_file_names():
    assert channel_file_name("sub_b", 1, ".nii.gz") == "sub_b_0001.nii.gz"
    m = CHANNEL_STEM_RE.match("sub_b_0001")
    assert m and (m["case"], int(m["channel"])) == ("sub_b", 1) and m.groups() == ("sub_b", "0001")
    assert CHANNEL_STEM_RE.match("case_001") is None and CHANNEL_STEM_RE.match("_0000") is None
    assert image_stem("a.b_0000.nii.gz") == "a.b_0000" and image_stem("a.nii") == "a" and image_stem("a.txt") is None


# ------------------------------------------------------------------------------------------------ autocast
def test_autocast_context_per_precision():
    cpu = torch.device("cpu")
    assert isinstance(autocast_context(cpu, "fp32"), contextlib.nullcontext)
    with autocast_context(cpu, "bf16"):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    for unresolved in ("auto", True, False):  # resolved by the caller, never guessed here
        with pytest.raises(ValueError, match=f"unknown precision '{unresolved}'"):
            autocast_context(cpu, unresolved)


# ------------------------------------------------------------------------------------------------ crops
def test_score_box_crop_at_the_volume_borders_equals_the_full_map():
    plans = make_plans()
    torch.manual_seed(0)
    net = build_network("screening", plans).eval()
    volume = np.random.default_rng(0).normal(size=(1, 30, 26, 18)).astype(np.float32)
    full = screening_score_map(net, volume, plans, tile_size=[1000, 1000, 1000], skip_empty=False)
    for box in [(slice(0, 3), slice(0, 4), slice(0, 2)), tuple(slice(n - 2, n) for n in full.shape),
                tuple(slice(0, n) for n in full.shape)]:
        np.testing.assert_allclose(score_box(net, volume, plans, box), full[box], rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------------ one case
def test_case_prediction_is_frozen_and_one_writer_writes_the_requested_files(tmp_path):
    binary = np.zeros(OBLIQUE["shape"], np.uint8)
    binary[4:6, 4:6, 2] = 1
    pred = CasePrediction(probabilities=binary * np.float32(0.9), binary=binary,
                          cmbs=cmb_table(binary, binary * 0.9, OBLIQUE), geometry=dict(OBLIQUE))
    assert len(pred.cmbs) == 1 and len(pred.candidates) == 0
    with pytest.raises(AttributeError):
        pred.binary = binary  # type: ignore[misc]
    outputs = CaseOutputs(tmp_path / "c.nii.gz", None, tmp_path / "c_probabilities.nii.gz",
                          candidates=tmp_path / "c_candidates.csv")
    assert not outputs.finished()
    write_case(pred, outputs)
    assert outputs.finished() and not (tmp_path / "c_cmbs.csv").exists()
    assert list(pd.read_csv(tmp_path / "c_candidates.csv").columns) == list(pred.candidates.columns)
