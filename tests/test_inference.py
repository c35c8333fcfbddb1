"""Prediction internals: shifted discrimination, patch merging, a planted CMB found at its world position,
geometry round trip, FCN == sliding window at the predictor level, input discovery and settings."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from cmbunet.errors import InputError
from cmbunet.imageio import SimpleITKIO
from cmbunet.inference.discrimination import (PaddedVolume, aggregate_shifts, discriminate_candidates,
                                              shift_offsets, shifted_probabilities)
from cmbunet.inference.input_cases import find_input_cases, select_part
from cmbunet.inference.options import FolderOptions, InferenceOptions
from cmbunet.inference.predictor import CMBPredictor, drop_small_components, resolve_settings, voxel_to_world
from cmbunet.inference.segmentation import gaussian_importance, merge_patches, segment_candidates
from cmbunet.networks import build_network
from cmbunet.plans import STAGES, Plans
from cmbunet.plans.plans_io import plans_hash, save_plans
from cmbunet.utilities.autocast import ForwardOptions
from cmbunet.utilities.file_io import save_json
from plan_helpers import make_plans



# ----------------------------------------------------------------------------------------------- helpers
def write_model(model_dir: Path, plans: Plans, folds=("0",), seed: int = 0) -> Path:
    """A model folder in the training layout with random tiny networks (checkpoint dicts as cmbunet_train writes)."""
    save_plans(plans, model_dir / "plans.json")
    save_json({"channel_names": plans.channel_names, "file_ending": ".nii.gz"}, model_dir / "dataset.json")
    for f_i, fold in enumerate(folds):
        for s_i, stage in enumerate(STAGES):
            torch.manual_seed(seed + 10 * f_i + s_i)
            net = build_network(stage, plans)
            ckpt = {"stage": stage, "epoch": 0, "weights": net.state_dict(), "plans_hash": plans_hash(plans)}
            (model_dir / f"fold_{fold}" / stage).mkdir(parents=True, exist_ok=True)
            torch.save(ckpt, model_dir / f"fold_{fold}" / stage / "checkpoint_final.pth")
    return model_dir


class DarkSpotScreening(nn.Module):
    """Stand-in FCN: CMB logit rises with the darkness of the 3x3x3 voxels at each block's centre."""

    def __init__(self, block, stride):
        super().__init__()
        self.conv = nn.Conv3d(1, 1, tuple(block), stride=tuple(stride), bias=False)
        w = torch.zeros_like(self.conv.weight)
        c = [b // 2 for b in block]
        w[0, 0, c[0] - 1:c[0] + 2, c[1] - 1:c[1] + 2, c[2] - 1:c[2] + 2] = -1.0 / 27
        self.conv.weight.data = w

    def forward(self, x):
        d = self.conv(x[:, :1])
        return torch.cat([torch.zeros_like(d), 2.0 * (d - 3.0)], dim=1)


class DarkSpotDiscrimination(nn.Module):
    """Stand-in CNN: CMB logit from the darkness of the central 2x2x2 block [c-1, c+1)."""

    def forward(self, x):
        c = [s // 2 for s in x.shape[2:]]
        d = -x[:, 0, c[0] - 1:c[0] + 1, c[1] - 1:c[1] + 1, c[2] - 1:c[2] + 1].mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(d), 2.0 * (d - 3.0)], dim=1)


class DarkVoxelSegmentation(nn.Module):
    """Stand-in U-Net: a voxel is CMB when its z-score is below -5."""

    def forward(self, x):
        logit = 2.0 * (-x[:, :1] - 5.0)
        return torch.cat([torch.zeros_like(logit), logit], dim=1)


def standin_predictor(plans: Plans, **kw) -> CMBPredictor:
    nets = {"screening": [DarkSpotScreening(plans.screening.block_size, plans.screening.fcn_stride)],
            "discrimination": [DarkSpotDiscrimination()], "segmentation": [DarkVoxelSegmentation()]}
    return CMBPredictor(plans, nets, **kw)


OBLIQUE = sitk.Euler3DTransform((0, 0, 0), 0.12, -0.2, 0.3).GetMatrix()  # row-major 3x3 rotation
PLANTED_INDEX = np.array([23.4, 20.7, 9.6])


def write_planted_case(path: Path, shape=(48, 44, 20), spacing=(0.9, 1.1, 2.0), origin=(-20.5, 13.25, -7.0),
                       radius_mm: float = 1.6, seed: int = 0) -> np.ndarray:
    """An oblique, anisotropic 'brain' (ellipsoid at 100 +- 2) with one dark sphere; returns its world centre."""
    rng = np.random.default_rng(seed)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    half = (np.asarray(shape) - 1) / 2
    brain = (((idx - half) / (half - 1.5)) ** 2).sum(-1) <= 1
    img = np.where(brain, 100 + rng.normal(0, 2, shape), 0.0)
    dist = np.linalg.norm((idx - PLANTED_INDEX) * np.asarray(spacing), axis=-1)
    img[dist <= radius_mm] = 15.0
    props = {"spacing": list(spacing), "origin": list(origin), "direction": list(OBLIQUE), "shape": list(shape)}
    SimpleITKIO.write(img.astype(np.float32), path, props)
    _, read_props = SimpleITKIO.read_images([path])
    return voxel_to_world(PLANTED_INDEX[None], read_props)[0]


@pytest.fixture(scope="module")
def plans() -> Plans:
    return make_plans()


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, np.ndarray]:
    folder = tmp_path_factory.mktemp("planted")
    world = write_planted_case(folder / "case_0000.nii.gz")
    return folder, world


# ----------------------------------------------------------------------------------------------- discrimination
def test_shift_offsets_are_27_unique_with_zero_first():
    s = shift_offsets(1)
    assert s.shape == (27, 3) and len({tuple(v) for v in s}) == 27
    assert (s[0] == 0).all() and np.abs(s).max() == 1
    assert len(shift_offsets(0)) == 1 and len(shift_offsets(2)) == 125


def test_aggregate_moves_candidate_to_best_shift_and_ties_keep_centre():
    shifts = shift_offsets(1)
    probs = np.full((2, 27), 0.3, dtype=np.float32)
    target = int(np.flatnonzero((shifts == [1, -1, 0]).all(1))[0])
    probs[0, target] = 0.9
    prob, moved = aggregate_shifts(probs, np.array([[5, 5, 5], [0, 3, 3]]), shifts, "max", shape=(10, 10, 10))
    np.testing.assert_allclose(prob, [0.9, 0.3])
    assert moved.tolist() == [[6, 4, 5], [0, 3, 3]]  # the tie (all 0.3) keeps the screening centre
    prob, moved = aggregate_shifts(probs, np.array([[5, 5, 5], [0, 3, 3]]), shifts, "mean")
    np.testing.assert_allclose(prob, [0.3 + 0.6 / 27, 0.3], rtol=1e-6)


@pytest.mark.parametrize("shift_vox", [1, 2])
def test_batched_shifted_discrimination_equals_one_block_at_a_time(plans, shift_vox):
    """Both the shared-trunk pass and the plain batched pass equal 27 (125) independent forward passes."""
    torch.manual_seed(0)
    net = build_network("discrimination", plans).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, as after training
        for m in net.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
    rng = np.random.default_rng(1)
    vol = rng.normal(size=(1, 30, 28, 16)).astype(np.float32)
    centres = np.array([[0, 0, 0], [15, 14, 8], [29, 27, 15], [3, 25, 1]])  # corners need padding
    block = plans.discrimination.block_size
    padded = PaddedVolume.create(vol, [b // 2 + 1 + shift_vox for b in block])
    shifts = shift_offsets(shift_vox)
    shared = shifted_probabilities([net], padded, centres, shifts, block, ForwardOptions(batch_size=60))
    plain = shifted_probabilities([net], padded, centres, shifts, block, ForwardOptions(batch_size=10),
                                  share_trunk=False)
    # reference: explicit zero padding and slicing of every (candidate, shift) block
    big = np.pad(vol, [(0, 0)] + [(40, 40)] * 3)
    lo = (centres[:, None] + shifts[None] - np.asarray(block) // 2 + 40).reshape(-1, 3)
    blocks = np.stack([big[:, a:a + block[0], b:b + block[1], c:c + block[2]] for a, b, c in lo])
    with torch.inference_mode():
        ref = torch.softmax(net(torch.from_numpy(blocks)), 1)[:, 1].numpy().reshape(len(centres), len(shifts))
    assert ref.std() > 1e-3  # the probabilities differ between shifts, so a wrong window would show
    np.testing.assert_allclose(plain, ref, atol=1e-5)
    np.testing.assert_allclose(shared, ref, atol=1e-5)
    prob, moved = discriminate_candidates([net], vol, centres, plans, ForwardOptions(batch_size=7), shift_vox=shift_vox,
                                          mirror=False)
    np.testing.assert_allclose(prob, ref.max(axis=1), atol=1e-5)
    assert (moved >= 0).all() and (moved < np.array(vol.shape[1:])).all()
    # test-time mirroring along x: the mean of each block's score and its mirrored block's, in both passes
    with torch.inference_mode():
        flipped = torch.softmax(net(torch.from_numpy(np.ascontiguousarray(blocks[:, :, ::-1]))), 1)[:, 1].numpy()
    mirrored_ref = (ref + flipped.reshape(ref.shape)) / 2
    for share in (True, False):
        mirrored = shifted_probabilities([net], padded, centres, shifts, block, ForwardOptions(batch_size=60),
                                         share_trunk=share, mirror_axes=(0,))
        np.testing.assert_allclose(mirrored, mirrored_ref, atol=1e-5)
    prob, _ = discriminate_candidates([net], vol, centres, plans, shift_vox=shift_vox, mirror=True)
    np.testing.assert_allclose(prob, mirrored_ref.max(axis=1), atol=1e-5)


# ----------------------------------------------------------------------------------------------- segmentation
def test_gaussian_importance_sigma_is_an_eighth_of_the_patch():
    g = gaussian_importance([32, 32, 24])
    assert g.shape == (32, 32, 24) and g.max() == pytest.approx(1.0) and g.min() > 0
    # sigma = 32/8 = 4 voxels around the centre 15.5: g(i) = exp(-(i - 15.5)^2 / 32)
    line = g[:, 15, 11] / g[15, 15, 11]
    np.testing.assert_allclose(line[[15, 19, 23]], np.exp(-(np.array([0.5, 3.5, 7.5]) ** 2 - 0.25) / 32), rtol=1e-5)


def test_merge_patches_weighted_average_in_overlap_zero_elsewhere():
    w = gaussian_importance([8, 8, 8])
    patches = np.stack([np.full((8, 8, 8), 0.2), np.full((8, 8, 8), 0.8)]).astype(np.float32)
    centres = np.array([[6, 6, 6], [10, 6, 6]])  # patches cover x [2,10) and [6,14)
    out = merge_patches(patches, centres, (20, 12, 12), w)
    assert out[0].max() == 0 and out[:, :, 11].max() == 0  # untouched voxels stay 0
    assert out[3, 6, 6] == pytest.approx(0.2) and out[12, 6, 6] == pytest.approx(0.8)
    w1, w2 = w[8 - 2, 4, 4], w[8 - 6, 4, 4]  # voxel x=8 is index 6 of patch 1 and index 2 of patch 2
    assert out[8, 6, 6] == pytest.approx((0.2 * w1 + 0.8 * w2) / (w1 + w2), rel=1e-5)
    border = merge_patches(patches[:1], np.array([[0, 0, 0]]), (5, 5, 5), w)  # half outside the volume
    assert border[:4, :4, :4].min() == pytest.approx(0.2) and border[4:].max() == 0


def test_fold_average_of_segmentation_equals_mean_of_single_folds(plans):
    nets = []
    for s in (0, 1):
        torch.manual_seed(s)
        nets.append(build_network("segmentation", plans).eval())
    vol = np.random.default_rng(0).normal(size=(1, 40, 36, 20)).astype(np.float32)
    centres = np.array([[20, 15, 9], [38, 35, 19]])
    both = segment_candidates(nets, vol, centres, plans, ForwardOptions(batch_size=2))
    single = [segment_candidates([n], vol, centres, plans) for n in nets]
    np.testing.assert_allclose(both, (single[0] + single[1]) / 2, atol=1e-5)
    assert both.shape == (40, 36, 20) and 0 <= both.min() and both.max() <= 1 and both[0, 35, 0] == 0


# ----------------------------------------------------------------------------------------------- whole predictor
def test_planted_cmb_is_found_at_its_world_position(plans, planted):
    folder, world = planted
    result = standin_predictor(plans).predict_case([folder / "case_0000.nii.gz"], case="case")
    cmbs = result.cmbs
    assert len(cmbs) == 1, cmbs
    found = cmbs[["x_mm", "y_mm", "z_mm"]].to_numpy()[0]
    assert np.linalg.norm(found - world) < 0.75, (found, world)
    assert cmbs["screening_score"].iloc[0] > 0.9 and cmbs["discrimination_score"].iloc[0] > 0.9
    assert cmbs["segmentation_score"].iloc[0] > 0.9
    # the planted sphere (r = 1.6 mm) has a volume of about 4/3 pi r^3 = 17 mm^3
    assert 8 < cmbs["volume_mm3"].iloc[0] < 40
    # NMS over a quarter block may keep a few neighbouring candidates on one CMB; they merge into one component
    assert 1 <= (result.candidates["kept"]).sum() <= 4
    _, props = SimpleITKIO.read_images([folder / "case_0000.nii.gz"])
    assert result.geometry == props and result.binary.shape == tuple(props["shape"])
    assert set(np.unique(result.binary)) == {0, 1}
    assert result.binary[tuple(np.rint(PLANTED_INDEX).astype(int))] == 1


def test_geometry_round_trip_of_oblique_anisotropic_case(plans, planted, tmp_path):
    folder, _ = planted
    summary = standin_predictor(plans).predict_folder(folder, tmp_path,
                                                      FolderOptions(save_probabilities=True, progress=False))
    assert summary["status"].tolist() == ["ok"]
    src = sitk.ReadImage(str(folder / "case_0000.nii.gz"))
    for name in ("case.nii.gz", "case_probabilities.nii.gz"):
        out = sitk.ReadImage(str(tmp_path / name))
        assert out.GetSize() == src.GetSize()
        np.testing.assert_allclose(out.GetSpacing(), src.GetSpacing(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(out.GetOrigin(), src.GetOrigin(), rtol=0, atol=1e-5)
        np.testing.assert_allclose(out.GetDirection(), src.GetDirection(), rtol=0, atol=1e-6)
    prob = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "case_probabilities.nii.gz")))
    assert prob.dtype == np.float32 and 0 <= prob.min() and prob.max() <= 1
    binary = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "case.nii.gz")))
    np.testing.assert_array_equal(binary, (prob >= 0.5).astype(binary.dtype))


def test_fcn_and_sliding_window_give_the_same_prediction(plans, tmp_path):
    model = write_model(tmp_path / "model", plans)
    rng = np.random.default_rng(3)
    img = np.where(rng.random((26, 24, 12)) < 0.97, 100 + rng.normal(0, 5, (26, 24, 12)), 10.0).astype(np.float32)
    img[:, :, 0] = 0
    props = {"spacing": [1.0, 1.0, 1.5], "origin": [0.0, 0.0, 0.0], "direction": list(np.eye(3).ravel()), "shape": [26, 24, 12]}
    SimpleITKIO.write(img, tmp_path / "small_0000.nii.gz", props)
    overrides = {"screening_threshold": 0.0, "discrimination_threshold": 0.0, "max_candidates": 6,
                 "shape_min_blob_ratio": -1000.0,
                 "shape_max_inplane_elongation": 1000.0}  # random networks: keep every candidate
    results = {}
    for mode in ("fcn", "sliding"):
        pred = CMBPredictor.from_model_folder(model, settings_overrides=overrides, options=InferenceOptions(mode=mode))
        results[mode] = pred.predict_case([tmp_path / "small_0000.nii.gz"])
    fcn, sliding = results["fcn"], results["sliding"]
    assert len(fcn.candidates) == 6
    np.testing.assert_array_equal(fcn.candidates[["x", "y", "z"]].to_numpy(), sliding.candidates[["x", "y", "z"]].to_numpy())
    np.testing.assert_allclose(fcn.candidates["screening_score"], sliding.candidates["screening_score"], atol=1e-5)
    np.testing.assert_allclose(fcn.probabilities, sliding.probabilities, atol=1e-5)
    assert fcn.probabilities.max() > 0  # segmentation ran around the kept candidates


def test_min_component_voxels_drops_small_cmbs_from_both_maps(plans, planted):
    binary = np.zeros((10, 10, 10), np.uint8)
    binary[1:3, 1:3, 1:3] = 1  # 8 voxels
    binary[6, 6, 6] = binary[7, 7, 7] = 1  # 2 voxels, 26-connected
    prob = binary * np.float32(0.9)
    kept, kept_prob = drop_small_components(binary, prob, 3)
    assert kept.sum() == 8 and kept[6, 6, 6] == 0 and kept_prob[7, 7, 7] == 0 and kept_prob[1, 1, 1] == np.float32(0.9)
    folder, _ = planted
    s = resolve_settings(plans, None, {"min_component_voxels": 1000})
    result = standin_predictor(plans, settings=s).predict_case([folder / "case_0000.nii.gz"])
    assert len(result.cmbs) == 0 and result.binary.sum() == 0 and result.probabilities.max() < 0.5


def test_cpu_bf16_stays_close_to_fp32(plans, planted):
    folder, _ = planted
    fp32 = standin_predictor(plans).predict_case([folder / "case_0000.nii.gz"])
    bf16_options = InferenceOptions(precision="bf16")
    bf16 = standin_predictor(plans, options=bf16_options).predict_case([folder / "case_0000.nii.gz"])
    assert np.abs(fp32.probabilities - bf16.probabilities).max() < 0.02
    assert len(bf16.cmbs) == len(fp32.cmbs) == 1


# ----------------------------------------------------------------------------------------------- inputs, settings
def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_find_valdo_cases_reports_missing_channel(tmp_path):
    for sub in ("sub-101", "sub-102"):
        _touch(tmp_path / sub / f"{sub}_space-T2S_desc-masked_T2S.nii.gz")
        _touch(tmp_path / sub / f"{sub}_space-T2S_CMB.nii.gz")
    _touch(tmp_path / "sub-101" / "sub-101_space-T2S_desc-masked_T1.nii.gz")
    cases = find_input_cases(tmp_path, {"0": "T2S", "1": "T1"})
    assert [c.case for c in cases] == ["sub-101", "sub-102"]
    assert cases[0].ok and [p.name for p in cases[0].images] == ["sub-101_space-T2S_desc-masked_T2S.nii.gz",
                                                                  "sub-101_space-T2S_desc-masked_T1.nii.gz"]
    assert cases[0].output_stem == "sub-101_space-T2S_prediction"
    assert not cases[1].ok and "sub-102_space-T2S_desc-masked_T1.nii.gz" in cases[1].error
    single = find_input_cases(tmp_path / "sub-101" / "sub-101_space-T2S_desc-masked_T2S.nii.gz", {"0": "T2*"})
    assert single[0].case == "sub-101" and single[0].ok and len(single[0].images) == 1


def test_find_channel_suffixed_cases_and_sharding(tmp_path):
    for case in ("b", "a", "c_x"):
        _touch(tmp_path / f"{case}_0000.nii.gz")
        _touch(tmp_path / f"{case}_0001.nii.gz")
    _touch(tmp_path / "d_0001.nii.gz")
    cases = find_input_cases(tmp_path, {"0": "T2S", "1": "T1"})
    assert [(c.case, c.ok) for c in cases] == [("a", True), ("b", True), ("c_x", True), ("d", False)]
    assert "d_0000.nii.gz" in cases[3].error
    parts = [select_part(cases, 3, i) for i in range(3)]
    names = [c.case for part in parts for c in part]
    assert sorted(names) == ["a", "b", "c_x", "d"] and len(set(names)) == 4
    with pytest.raises(InputError):
        select_part(cases, 2, 2)
    with pytest.raises(InputError, match=r"^--part-id must be in \[0, 1\] for --num-parts 2, got 2$"):
        select_part(cases, 2, 2)
    with pytest.raises(InputError, match=r"^--num-parts must be at least 1, got 0$"):
        select_part(cases, 0, 0)
    with pytest.raises(InputError):
        find_input_cases(tmp_path / "nothing_here", {"0": "T2S"})
    shutil.rmtree(tmp_path)
    tmp_path.mkdir()
    with pytest.raises(InputError, match="no input images"):
        find_input_cases(tmp_path, {"0": "T2S"})


def test_settings_file_sets_defaults_and_flags_override(plans, tmp_path):
    assert resolve_settings(plans, tmp_path).discrimination_threshold == 0.5
    save_json({"discrimination_threshold": 0.7, "screening_threshold": 0.2, "note": "picked on validation"},
              tmp_path / "inference_settings.json")
    s = resolve_settings(plans, tmp_path, {"screening_threshold": 0.05, "discrimination_threshold": None})
    assert s.discrimination_threshold == 0.7 and s.screening_threshold == 0.05 and "note" not in s.to_dict()


class EmptySegmentation(nn.Module):
    """Stand-in U-Net that segments nothing, like the trained one at some one-voxel microbleeds."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x[:, :1]), torch.full_like(x[:, :1], -20.0)], dim=1)


def test_small_spot_the_unet_leaves_empty_is_written_as_its_dark_spot(plans, planted):
    from dataclasses import replace

    folder, world = planted
    nets = {"screening": [DarkSpotScreening(plans.screening.block_size, plans.screening.fcn_stride)],
            "discrimination": [DarkSpotDiscrimination()], "segmentation": [EmptySegmentation()]}
    image = [folder / "case_0000.nii.gz"]
    results = {}
    for limit in (None, 2.0, 4.0):
        p = replace(plans, inference=replace(plans.inference, unsegmented_spot_max_diameter_mm=limit))
        results[limit] = CMBPredictor(p, nets).predict_case(image, case="case")
    assert len(results[None].cmbs) == 0 and results[None].binary.max() == 0  # the U-Net alone writes nothing
    kept = results[4.0].candidates[results[4.0].candidates["kept"]]
    assert (kept["spot_diameter_mm"] > 2.0).all() and (kept["spot_diameter_mm"] <= 4.0).all()
    assert len(results[2.0].cmbs) == 0  # the spot is wider than 2 mm
    cmbs = results[4.0].cmbs
    assert len(cmbs) == 1
    assert np.linalg.norm(cmbs[["x_mm", "y_mm", "z_mm"]].to_numpy()[0] - world) < 1.0
    assert cmbs["segmentation_score"].iloc[0] == pytest.approx(kept["discrimination_score"].max(), abs=1e-6)
    assert 5 <= results[4.0].binary.sum() <= 40  # the half-depth spot of a 1.6 mm ball on 0.9 x 1.1 x 2 mm voxels


def test_add_unsegmented_spots_writes_only_where_the_unet_found_nothing():
    from cmbunet.inference.segmentation import add_unsegmented_spots
    from cmbunet.inference.shape import dark_spots

    rng = np.random.default_rng(0)
    image = rng.normal(0.0, 0.1, (40, 30, 20)).astype(np.float32)
    image[8:10, 10:12, 9:11] = -3.0  # spot A, left empty
    image[28:31, 14:17, 8:11] = -3.0  # spot B, segmented by the "U-Net"
    centres = np.array([[9, 11, 10], [29, 15, 9]])
    probabilities = np.zeros(image.shape, np.float32)
    probabilities[29, 15, 9] = 0.9
    spots = dark_spots(image, centres, (1.0, 1.0, 1.0))
    out, written = add_unsegmented_spots(probabilities, spots, centres, np.array([0.97, 0.99]), 0.5)
    assert written == 1 and probabilities.max() == pytest.approx(0.9)  # the input is not changed
    a = np.zeros(image.shape, bool)
    a[8:10, 10:12, 9:11] = True
    assert (out[a] == np.float32(0.97)).all() and (out[~a] == probabilities[~a]).all()
    none, zero = add_unsegmented_spots(probabilities, dark_spots(image, centres[:0], (1, 1, 1)), centres[:0],
                                       np.zeros(0), 0.5)
    assert zero == 0 and none is probabilities


def test_components_away_from_every_kept_candidate_are_dropped():
    from cmbunet.inference.segmentation import components_at_candidates

    p = np.zeros((30, 30, 20), np.float32)
    p[5:8, 5:8, 5:8] = 0.9  # holds the kept candidate at (6, 6, 6)
    p[12:14, 5:7, 5:7] = 0.8  # its edge 4 voxels from the candidate: a neighbour the patch also segmented
    p[20:22, 20:22, 10:12] = 0.7  # 2 voxels (a box) from the second candidate
    p[25, 25, 15] = 0.3  # below the threshold: not a component, left as it is
    out, dropped = components_at_candidates(p, np.array([[6, 6, 6], [23, 23, 13]]), 0.5)
    assert dropped == 1 and p[12, 5, 5] == np.float32(0.8)  # the input is not changed
    assert out[12:14, 5:7, 5:7].max() == 0
    np.testing.assert_array_equal(out[5:8, 5:8, 5:8], p[5:8, 5:8, 5:8])
    np.testing.assert_array_equal(out[20:22, 20:22, 10:12], p[20:22, 20:22, 10:12])
    assert out[25, 25, 15] == np.float32(0.3)
    same, none = components_at_candidates(p, np.array([[6, 6, 6], [12, 5, 5], [21, 21, 11]]), 0.5)
    assert none == 0 and same is p
    assert components_at_candidates(p, np.zeros((0, 3)), 0.5)[1] == 3
