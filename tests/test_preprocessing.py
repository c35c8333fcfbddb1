"""Preprocessing: crop, normalisation, resampling, CMB rescue, native round trip, splits."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from scipy import ndimage as ndi

from cmbunet.errors import CMBUNetError, InputError
from cmbunet.imageio.reader_writer import SimpleITKIO
from cmbunet.preprocessing.preprocessor import (
    describe_cmbs,
    export_segmentation,
    export_to_native,
    load_preprocessed_case,
    native_geometry,
    preprocess_case,
    save_preprocessed_case,
)
from cmbunet.preprocessing.resampling import compute_new_shape, resample_array, resample_image, separate_axis
from cmbunet.preprocessing.splits import generate_splits, get_fold_cases, load_or_create_splits
from plan_helpers import make_plans

IDENTITY = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]


def _props(shape, spacing, origin=(0.0, 0.0, 0.0), direction=IDENTITY):
    return {"spacing": list(spacing), "origin": list(origin), "direction": list(direction), "shape": list(shape)}


def _plans(target, separate_z=False):
    """Planned plans (one channel, z-score, cubic spline, anisotropy threshold 3) at ``target`` spacing."""
    return make_plans(overrides=[f"target_spacing={json.dumps([float(t) for t in target])}",
                                 f"resampling.separate_z={json.dumps(separate_z)}"])


def _ellipsoid(shape, center, radii):
    grid = np.indices(shape, dtype=np.float32)
    d = sum(((grid[a] - center[a]) / radii[a]) ** 2 for a in range(3))
    return d <= 1.0


def _sphere_label(shape, centers, radius):
    return np.any([_ellipsoid(shape, c, (radius,) * 3) for c in centers], axis=0).astype(np.uint8)


def _brain_image(shape, seed=0):
    """Zero background, a brain-like ellipsoid with texture; returns (images (1,X,Y,Z), brain mask)."""
    rng = np.random.default_rng(seed)
    c = [s / 2 for s in shape]
    brain = _ellipsoid(shape, c, [0.35 * s for s in shape])
    img = np.zeros((1,) + tuple(shape), np.float32)
    img[0][brain] = rng.normal(200.0, 20.0, brain.sum()).astype(np.float32)
    return img, brain


def test_crop_bbox_and_nonfinite():
    shape = (40, 36, 20)
    img = np.zeros((1,) + shape, np.float32)
    img[0, 5:30, 8:20, 3:17] = 7.0
    img[0, 10, 10, 10] = np.nan
    img[0, 11, 10, 10] = np.inf
    data, seg, brain, props = preprocess_case(img, _props(shape, (1, 1, 1)), _plans((1, 1, 1)), case="c1")
    assert props["crop_bbox"] == [[5, 30], [8, 20], [3, 17]]
    assert props["shape_after_crop"] == [25, 12, 14] == list(data.shape[1:])
    assert props["nonfinite_replaced"] == 2
    assert seg is None and props["cmbs"] == [] and props["vanished_cmbs"] == 0
    # the two replaced voxels are background now: the rest stays brain
    assert brain.sum() == 25 * 12 * 14 - 2
    assert np.all(np.isfinite(data))


def test_all_zero_image_is_input_error():
    img = np.zeros((1, 8, 8, 8), np.float32)
    with pytest.raises(InputError, match="entirely zero"):
        preprocess_case(img, _props((8, 8, 8), (1, 1, 1)), _plans((1, 1, 1)), case="empty")


def test_zscore_over_foreground_only():
    img, brain = _brain_image((32, 32, 24))
    data, _, brain_out, props = preprocess_case(img, _props(img.shape[1:], (1, 1, 1)), _plans((1, 1, 1)))
    values = img[0][brain]
    assert props["channel_stats"][0]["mean"] == pytest.approx(values.mean(), rel=1e-5)
    assert props["channel_stats"][0]["std"] == pytest.approx(values.std(), rel=1e-4)
    fg = data[0][brain_out]
    assert fg.mean() == pytest.approx(0.0, abs=1e-4)
    assert fg.std() == pytest.approx(1.0, abs=1e-3)
    assert np.all(data[0][~brain_out] == 0.0)


def test_resampling_shape_and_no_stray_nonzeros():
    img, _ = _brain_image((48, 48, 16))
    plans = _plans((0.5, 0.5, 0.8))
    data, _, brain, props = preprocess_case(img, _props(img.shape[1:], (1.0, 1.0, 2.0)), plans)
    crop = props["shape_after_crop"]
    expected = [round(crop[0] * 2), round(crop[1] * 2), round(crop[2] * 2.5)]
    assert props["shape_after_resampling"] == expected == list(data.shape[1:]) == list(brain.shape)
    assert props["target_spacing"] == [0.5, 0.5, 0.8]
    # cubic splines ring into the background; every voxel outside the brain must be exactly 0
    assert brain.any() and not brain.all()
    assert np.count_nonzero(data[0][~brain]) == 0
    # brain volume in mm^3 is preserved within a few percent
    vol_in = np.count_nonzero(img[0]) * 1.0 * 1.0 * 2.0
    vol_out = brain.sum() * 0.5 * 0.5 * 0.8
    assert vol_out == pytest.approx(vol_in, rel=0.05)


@pytest.mark.parametrize("order", [0, 1, 3])
def test_separable_resampling_equals_ndimage_zoom(order):
    # the edge-aligned convention of zoom(grid_mode=True) is what export_to_native inverts
    arr = np.random.default_rng(1).normal(size=(17, 12, 7)).astype(np.float32)
    shape = (30, 9, 16)
    ref = ndi.zoom(arr, [n / o for n, o in zip(shape, arr.shape)], order=order, mode="nearest", grid_mode=True)
    np.testing.assert_allclose(resample_array(arr, shape, order), ref, atol=1e-5)


def test_separate_z_uses_nearest_along_z():
    # z stripes: along z the values must be copies of original slices (order 0), never blends
    arr = np.zeros((10, 10, 4), np.float32)
    arr[..., :] = np.array([1.0, 5.0, 2.0, 8.0], np.float32)
    out = resample_image(arr, [20, 20, 12], order=3, order_z=0, sep_axis=2)
    assert out.shape == (20, 20, 12)
    np.testing.assert_allclose(np.unique(np.round(out, 4)), [1.0, 2.0, 5.0, 8.0], atol=1e-4)
    # cubic along z would blend them
    blended = resample_image(arr, [20, 20, 12], order=3, sep_axis=None)
    assert len(np.unique(np.round(blended, 4))) > 4
    assert separate_axis((0.5, 0.5, 3.0), (0.5, 0.5, 0.8), False, 3.0) == 2
    assert separate_axis((0.5, 0.5, 0.8), (0.5, 0.5, 0.8), False, 3.0) is None
    assert separate_axis((0.5, 0.5, 0.8), (0.5, 0.5, 0.8), True, 3.0) == 2
    assert compute_new_shape((100, 100, 20), (0.5, 0.5, 3.0), (0.5, 0.5, 0.8)) == [100, 100, 75]


def test_separate_z_in_preprocess_case():
    img, _ = _brain_image((40, 40, 10))
    data, _, brain, props = preprocess_case(
        img, _props(img.shape[1:], (0.5, 0.5, 3.0)), _plans((0.5, 0.5, 1.0), separate_z=True)
    )
    assert props["shape_after_resampling"][2] == props["shape_after_crop"][2] * 3
    # nearest along z: each original slice becomes 3 identical slices
    np.testing.assert_array_equal(data[0][:, :, 3], data[0][:, :, 4])
    np.testing.assert_array_equal(data[0][:, :, 4], data[0][:, :, 5])


def test_vanished_cmb_is_rescued():
    shape = (40, 40, 40)
    img, _ = _brain_image(shape)
    seg = np.zeros(shape, np.uint8)
    seg[20, 20, 20] = 1  # single voxel: disappears when downsampled 3x
    seg[10:16, 12:18, 14:20] = 1  # large one survives
    plans = _plans((3.0, 3.0, 3.0))
    _, seg_out, _, props = preprocess_case(img, _props(shape, (1, 1, 1)), plans, seg=seg)
    assert props["vanished_cmbs"] == 1
    assert len(props["cmbs"]) == 2
    # the rescued voxel sits at the mapped centre: original 20 in crop coordinates -> new grid
    x0, y0, z0 = (b[0] for b in props["crop_bbox"])
    crop = props["shape_after_crop"]
    new = props["shape_after_resampling"]
    expect = [int(np.rint((c - o + 0.5) * n / s - 0.5)) for c, o, n, s in zip((20, 20, 20), (x0, y0, z0), new, crop)]
    assert seg_out[tuple(expect)] == 1
    small = min(props["cmbs"], key=lambda c: c["volume_voxels"])
    assert small["volume_voxels"] == 1 and small["center"] == [float(v) for v in expect]


def test_describe_cmbs_uses_26_connectivity():
    seg = np.zeros((10, 10, 10), np.uint8)
    seg[2, 2, 2] = seg[3, 3, 3] = 1  # diagonal neighbours: one CMB
    seg[7:9, 7, 7] = 1
    cmbs = describe_cmbs(seg)
    assert [c["volume_voxels"] for c in cmbs] == [2, 2]
    assert cmbs[0]["center"] == [2.5, 2.5, 2.5]
    assert cmbs[0]["bbox"] == [[2, 4], [2, 4], [2, 4]]
    assert cmbs[1]["bbox"] == [[7, 9], [7, 8], [7, 8]]


def _oblique_direction():
    a, b = np.deg2rad(20.0), np.deg2rad(-12.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return [float(v) for v in (rz @ rx).ravel()]


def test_round_trip_oblique_anisotropic(tmp_path):
    shape = (48, 44, 18)
    spacing = (0.6, 0.55, 2.5)
    origin = (-31.5, 12.25, 40.0)
    direction = _oblique_direction()
    img, brain = _brain_image(shape, seed=3)
    centers = [(24, 22, 9), (16, 20, 8), (30, 28, 10)]
    # lesions of radius 3 voxels in-plane and 2 slices through-plane
    seg = np.any(
        [_ellipsoid(shape, c, (3.0, 3.0, 2.0)) for c in centers], axis=0
    ).astype(np.uint8)
    props_in = _props(shape, spacing, origin, direction)
    img_path = tmp_path / "case_0000.nii.gz"
    SimpleITKIO.write(img[0], img_path, props_in)
    images, props = SimpleITKIO.read_images([img_path])

    plans = _plans((0.5, 0.5, 0.8), separate_z=True)
    data, seg_pp, _, properties = preprocess_case(images, props, plans, seg=seg, case="case")
    assert properties["vanished_cmbs"] == 0 and len(properties["cmbs"]) == 3
    back = export_to_native(seg_pp.astype(np.float32), properties)
    assert back.shape == shape
    pred = back >= 0.5
    dice = 2 * np.logical_and(pred, seg > 0).sum() / (pred.sum() + seg.sum())
    assert dice >= 0.9, dice
    outside = np.ones(shape, bool)
    outside[tuple(slice(a, b) for a, b in properties["crop_bbox"])] = False
    assert outside.any() and np.all(back[outside] == 0)

    out_path = tmp_path / "pred.nii.gz"
    SimpleITKIO.write(back, out_path, native_geometry(properties))
    _, written = SimpleITKIO.read_seg(out_path)
    np.testing.assert_allclose(written["spacing"], spacing, rtol=1e-6)
    np.testing.assert_allclose(written["origin"], origin, atol=1e-5)
    np.testing.assert_allclose(written["direction"], direction, atol=1e-6)
    assert written["shape"] == list(shape)


def test_export_keeps_every_predicted_cmb():
    """A one-voxel prediction on a finer preprocessed grid falls below 0.5 at every original voxel after linear
    interpolation; the export keeps it at the original voxel nearest its centre, with its probability."""
    props = {"case": "x", "shape_after_resampling": [30, 30, 30], "shape_after_crop": [20, 20, 13],
             "original_shape": [24, 22, 15], "crop_bbox": [[2, 22], [1, 21], [1, 14]]}
    prob = np.zeros((30, 30, 30), np.float32)
    prob[7, 7, 7] = 0.9  # a lone voxel between original voxel centres: lost by plain interpolation
    prob[18:24, 18:24, 18:24] = 0.95  # a large one survives on its own
    plain = export_to_native(prob, props)
    assert ndi.label(plain >= 0.5)[1] == 1
    native, binary, rescued = export_segmentation(prob, props, 0.5)
    assert rescued == 1 and ndi.label(binary, np.ones((3, 3, 3)))[1] == 2
    np.testing.assert_array_equal(binary, native >= 0.5)
    # the kept voxel: the lone voxel's centre mapped to the cropped original grid, then shifted by the crop
    expect = [int(np.rint((7 + 0.5) * c / 30 - 0.5)) + b[0] for c, b in zip([20, 20, 13], props["crop_bbox"])]
    assert binary[tuple(expect)] == 1 and native[tuple(expect)] == pytest.approx(0.9)
    # nothing else changed
    changed = native != np.clip(plain, 0, 1)
    assert changed.sum() == 1 and changed[tuple(expect)]
    # no prediction, nothing to keep; same grid, nothing lost
    assert export_segmentation(np.zeros((30, 30, 30), np.float32), props)[2] == 0
    same = {**props, "shape_after_resampling": [20, 20, 13]}
    assert export_segmentation(np.full((20, 20, 13), 0.7, np.float32), same)[1].sum() == 20 * 20 * 13


def test_export_rejects_wrong_shape():
    props = {"case": "x", "shape_after_resampling": [4, 4, 4], "shape_after_crop": [4, 4, 4],
             "original_shape": [6, 6, 6], "crop_bbox": [[1, 5], [1, 5], [1, 5]]}
    with pytest.raises(InputError, match="does not match"):
        export_to_native(np.zeros((5, 4, 4)), props)
    out = export_to_native(np.ones((4, 4, 4)), props)
    assert out.sum() == 64 and out[0].sum() == 0 and out[1:5, 1:5, 1:5].min() == 1


def test_save_and_load_preprocessed_case(tmp_path):
    img, _ = _brain_image((24, 24, 16))
    seg = _sphere_label((24, 24, 16), [(12, 12, 8)], 2)
    data, s, b, props = preprocess_case(img, _props((24, 24, 16), (1, 1, 1)), _plans((1, 1, 1)), seg, case="c")
    save_preprocessed_case(tmp_path, "c", data, s, b, props)
    d2, s2, b2, p2 = load_preprocessed_case(tmp_path, "c")
    assert d2.dtype == np.float32 and s2.dtype == np.uint8 and b2.dtype == bool
    np.testing.assert_array_equal(d2, data)
    np.testing.assert_array_equal(s2, s)
    assert p2["cmbs"] == props["cmbs"] and p2["crop_bbox"] == props["crop_bbox"]
    with pytest.raises(InputError, match="missing"):
        load_preprocessed_case(tmp_path, "nope")


def test_splits_deterministic_stratified_disjoint():
    cases = [f"sub-{i:03d}" for i in range(23)]
    has = {c: i % 3 != 0 for i, c in enumerate(cases)}  # 15 with CMBs, 8 without
    a = generate_splits(list(reversed(cases)), has)
    b = generate_splits(cases, has)
    assert a == b and len(a) == 5
    vals = [set(f["val"]) for f in a]
    assert set().union(*vals) == set(cases)
    assert sum(len(v) for v in vals) == len(cases)
    for f in a:
        assert set(f["train"]).isdisjoint(f["val"])
        assert set(f["train"]) | set(f["val"]) == set(cases)
        assert sum(has[c] for c in f["val"]) in (3,)  # 15 positives over 5 folds
        assert len(f["val"]) in (4, 5)
    assert generate_splits(cases, has, seed=1) != a


def test_splits_few_cases_and_fold_all(tmp_path):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        s = generate_splits(["a", "b", "c"], {"a": True})
    assert len(s) == 3 and any("3 folds" in str(x.message) for x in w)
    assert get_fold_cases(s, "all") == (["a", "b", "c"], [])
    train, val = get_fold_cases(s, 1)
    assert len(val) == 1 and len(train) == 2
    with pytest.raises(CMBUNetError):
        get_fold_cases(s, 3)
    with pytest.raises(CMBUNetError):
        generate_splits(["a"], {})
    first = load_or_create_splits(tmp_path, ["a", "b", "c", "d"], {"a": True}, n_folds=2)
    assert (tmp_path / "splits_final.json").is_file()
    assert load_or_create_splits(tmp_path, ["a", "b", "c", "d"], {}, n_folds=2, seed=99) == first
