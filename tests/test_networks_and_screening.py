"""Networks match Chen & Dou's tables; the fully convolutional score map equals explicit block classification."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmbunet.inference.candidates import find_candidates
from cmbunet.inference.screening import score_map_shape, screening_score_map
from cmbunet.networks import DiscriminationCNN, ScreeningFCN, SegmentationUNet, build_network
from cmbunet.networks.screening import screening_output_size
from cmbunet.plans import Plans
from cmbunet.utilities.patches import central_label, extract_patches
from plan_helpers import paper_plans

#: Chen & Dou's plans, with Chen & Dou's reference NMS window of half a block
PAPER_PLANS = paper_plans(["inference.nms_size_vox=[10,10,8]"])


def tiny_plans(channels: tuple[str, ...] = ("T2S",)) -> Plans:
    return paper_plans(["inference.nms_size_vox=[10,10,8]", "screening.network.features=[4,4,8,8,8]"], channels)


def test_screening_fcn_reproduces_002_table1_layer_sizes():
    net = ScreeningFCN()
    x = torch.zeros(1, 1, 20, 20, 16)
    sizes = []
    for layer in list(net.features) + list(net.head):
        x = layer(x)
        if isinstance(layer, (torch.nn.Sequential, torch.nn.MaxPool3d, torch.nn.Conv3d)):
            sizes.append((x.shape[1], *x.shape[2:]))
    assert sizes == [(64, 16, 16, 14), (64, 12, 12, 12), (64, 6, 6, 6), (128, 4, 4, 4), (128, 2, 2, 2), (256, 1, 1, 1), (2, 1, 1, 1)]
    assert screening_output_size([20, 20, 16], [5, 5, 3], [2, 2, 2]) == [1, 1, 1]
    # BN after C1-C4 only (Chen & Dou Table 1: C5 and C6 have none)
    assert sum(isinstance(m, torch.nn.BatchNorm3d) for m in net.modules()) == 4


def test_discrimination_and_unet_shapes_from_plans():
    disc = build_network("discrimination", PAPER_PLANS)
    assert isinstance(disc, DiscriminationCNN) and disc.trunk_size == (4, 4, 4)  # 128x4x4x4 as in Chen & Dou Table 2
    assert disc.classifier[1].in_features == 128 * 64 and disc.classifier[1].out_features == 512
    assert disc.eval()(torch.zeros(3, 1, 24, 24, 20)).shape == (3, 2)
    unet = build_network("segmentation", PAPER_PLANS)
    assert isinstance(unet, SegmentationUNet)
    assert unet(torch.zeros(2, 1, 32, 32, 24)).shape == (2, 2, 32, 32, 24)
    with pytest.raises(ValueError):
        unet(torch.zeros(1, 1, 30, 32, 24))
    with pytest.raises(ValueError):
        build_network("nonsense", PAPER_PLANS)


@pytest.mark.parametrize("prior", [3e-4, 1e-2])
def test_unet_starts_at_the_planned_foreground_prior(prior):
    """The U-Net's first prediction is "CMB with probability ``prior`` everywhere", whatever the input."""
    plans = paper_plans(["segmentation.network.features=[4,8,8,16]", f"segmentation.network.foreground_prior={prior}"])
    torch.manual_seed(0)
    unet = build_network("segmentation", plans).eval()
    with torch.no_grad():
        p = torch.softmax(unet(torch.randn(2, 1, 32, 32, 24)), dim=1)[:, 1]
    assert float(p.mean()) == pytest.approx(prior, rel=0.05) and float(p.max()) < 1.5 * prior


def test_multichannel_input_from_plans():
    plans = tiny_plans(("T2S", "T1", "FLAIR"))
    net = build_network("screening", plans)
    assert net(torch.zeros(1, 3, 20, 20, 16)).shape == (1, 2, 1, 1, 1)


def test_extract_patches_matches_naive_slicing_including_borders():
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(2, 17, 13, 11)).astype(np.float32)
    centres = np.array([[8, 6, 5], [0, 0, 0], [16, 12, 10], [3, 11, 2]])
    size = (6, 5, 4)
    got = extract_patches(vol, centres, size)
    padded = np.pad(vol, [(0, 0), (10, 10), (10, 10), (10, 10)])
    for n, c in enumerate(centres):
        lo = c - np.array(size) // 2 + 10
        ref = padded[:, lo[0] : lo[0] + size[0], lo[1] : lo[1] + size[1], lo[2] : lo[2] + size[2]]
        np.testing.assert_array_equal(got[n], ref)
    assert extract_patches(vol[0], centres, size).shape == (4, 6, 5, 4)
    assert extract_patches(vol, np.zeros((0, 3), int), size).shape == (0, 2, 6, 5, 4)


def test_central_label_uses_the_central_2x2x2_block():
    seg = np.zeros((3, 8, 8, 6), np.uint8)
    seg[0, 3, 3, 2] = 1  # inside [c-1, c+1) = [3,5)x[3,5)x[2,4)
    seg[1, 2, 4, 3] = 1  # just outside along x
    seg[2, 4, 4, 3] = 1
    assert central_label(seg).tolist() == [True, False, True]


@pytest.mark.parametrize("shape", [(26, 23, 19), (9, 12, 7), (33, 20, 16)])
def test_fcn_score_map_equals_sliding_window_and_tiling(shape):
    torch.manual_seed(0)
    plans = tiny_plans()
    net = build_network("screening", plans).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics so that eval mode matters
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    vol = np.random.default_rng(1).normal(size=(1, *shape)).astype(np.float32)
    fcn = screening_score_map(net, vol, plans, tile_size=[1000, 1000, 1000])
    sliding = screening_score_map(net, vol, plans, mode="sliding")
    tiled = screening_score_map(net, vol, plans, tile_size=[24, 22, 18])
    assert fcn.shape == score_map_shape(shape, plans) == tuple(-(-n // 2) for n in shape)
    assert np.abs(fcn - sliding).max() <= 1e-4
    assert np.abs(fcn - tiled).max() <= 1e-5
    # score voxel j is the block centred on input voxel 2j, cut from the unpadded volume
    j = np.array([[0, 0, 0], [s // 2 - 1 for s in fcn.shape]])
    patches = torch.from_numpy(extract_patches(vol, 2 * j, plans.screening.block_size))
    with torch.no_grad():
        direct = torch.softmax(net(patches), 1)[:, 1].reshape(-1).numpy()
    np.testing.assert_allclose(direct, fcn[tuple(j.T)], atol=1e-5)


def test_candidates_threshold_nms_and_exact_mapping():
    plans = tiny_plans()
    score = np.zeros((20, 20, 12), np.float32)
    score[5, 6, 7] = 0.9
    score[6, 6, 7] = 0.8  # suppressed by the neighbouring stronger peak
    score[15, 15, 3] = 0.4
    score[15, 2, 3] = 0.05  # below threshold
    centres, scores = find_candidates(score, plans)
    assert centres.tolist() == [[10, 12, 14], [30, 30, 6]]
    np.testing.assert_allclose(scores, [0.9, 0.4])
    assert find_candidates(score, plans, max_candidates=1)[0].tolist() == [[10, 12, 14]]
    # a plateau of equal maxima gives one candidate, nothing above threshold gives none
    flat = np.zeros((10, 10, 10), np.float32)
    flat[4:6, 4:6, 4:6] = 0.7
    assert len(find_candidates(flat, plans)[0]) == 1
    c, s = find_candidates(np.zeros((5, 5, 5), np.float32), plans)
    assert c.shape == (0, 3) and s.shape == (0,)


def test_nms_footprint_one_keeps_neighbouring_distinct_peaks_and_breaks_ties():
    """A 1-voxel NMS window must not merge adjacent voxels of different scores into one candidate."""
    plans = tiny_plans()
    score = np.zeros((8, 8, 8), np.float32)
    score[3, 3, 3], score[4, 3, 3] = 0.9, 0.8
    centres, scores = find_candidates(score, plans, nms_size=[1, 1, 1])
    assert centres.tolist() == [[6, 6, 6], [8, 6, 6]] and np.allclose(scores, [0.9, 0.8])
    # a saturated plateau inside one NMS window gives one candidate, whatever its shape
    sat = np.zeros((12, 12, 12), np.float32)
    sat[4:7, 5, 5] = 1.0
    sat[5, 4:7, 5] = 1.0
    assert len(find_candidates(sat, plans, nms_size=[7, 7, 7])[0]) == 1
