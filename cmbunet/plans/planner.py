"""Turn a dataset fingerprint into the plans: target spacing, block sizes, network topologies, schedules.

Every derived number is written next to the rule that produced it (``target_spacing_rule``, ``cmb_box.rule``
and the ``rules`` table), so a plans file explains itself. The planner is the one source of planned values:
readers take them from the typed :class:`~cmbunet.plans.schema.Plans` it returns and have no defaults of their
own. The network-size arithmetic is in :mod:`cmbunet.plans.topology`, the schedules in
:mod:`cmbunet.plans.schedules`.
"""

from __future__ import annotations

import copy
import math
from typing import Sequence

import numpy as np

from cmbunet.errors import CMBUNetError
from cmbunet.plans.overrides import apply_overrides
from cmbunet.plans.schedules import cpu_schedules, gpu_schedules, training_schedules  # noqa: F401 - re-exported
from cmbunet.plans.schema import PLANS_VERSION, Plans
from cmbunet.plans.topology import (ANISOTROPY_THRESHOLD, DISCRIMINATION_EXTRA_VOX, FCN_STRIDE, last_kernel_for_block,
                                    needs_separate_z, nms_size, screening_block_for_box,
                                    segmentation_foreground_prior, segmentation_patch_size, tile_size)

PRESETS = ("auto", "fast", "paper", "tiny")

DEFAULT_CMB_QUANTILE = 0.984  # Chen & Dou: "98.4% of CMBs can be covered by a bounding box of this size"
MIN_FIRST_KERNEL, MAX_FIRST_KERNEL = 3, 5
MAX_TRANSLATION_VOX = 3  # Chen & Dou: "translation (< 4 voxels)"
#: Screening threshold at inference. The paper screens at 0.1. At 0.5 the default models found the same microbleeds
#: on three sites they never saw, with one false positive fewer, 2.5-4x fewer candidates and iso3T subjects 26.4
#: -> 14.3 s (documentation/benchmarks.md, 6g). Training still counts candidates at the mining threshold (0.1):
#: :meth:`cmbunet.plans.schema.Plans.candidate_count_threshold`.
SCREENING_THRESHOLD = 0.5
PAPER_SCREENING_THRESHOLD = 0.1  # Chen & Dou, kept by preset paper
#: Most of a kept spot's surroundings that may be CSF or outside the brain (cmbunet.inference.location): above the
#: 98th percentile of microbleeds' share (0.50) on 18 subjects of the training sites' wide world, where it drops
#: 1 of 49 microbleeds and 40-44% of the calcifications of the choroid plexus and pineal
#: (benchmarks/location_share.py, data seeds 7000-7017).
LOCATION_MAX_CSF_SHARE = 0.6
#: Least curvature a kept spot must show, as a share of a small round microbleed's on the scan's voxels
#: (cmbunet.inference.blob): below the lowest of 83 microbleed candidates with probability above 0.2 (0.48) on 18
#: subjects of the training sites' wide world, where it drops the 6 veins and 3 of 42 calcifications the default model kept
#: (benchmarks/blob_ratio.py, data seeds 7000xxx).
SHAPE_MIN_BLOB_RATIO = 0.4
#: Most a kept spot may be longer than wide on the slice that holds most of it (cmbunet.inference.shape): on 6
#: subjects of thick15T (3-3.5 mm slices, a site no benchmark trains on or holds out) it drops 19 of the 29 veins the
#: default model kept and 1 of its 31 microbleeds (2.0: 11 veins, the same microbleed); no microbleed candidate
#: with probability above 0.5 on 12 subjects of the training sites is above 1.6 (benchmarks/inplane_elongation.py,
#: data seeds 7000xxx).
SHAPE_MAX_INPLANE_ELONGATION = 1.8

#: ``plans["augmentation"]["intensity"]`` (:mod:`cmbunet.training.intensity_augmentation`): nnU-Net's intensity
#: set, with the
#: low-resolution simulation allowed down to a third of the resolution across slices (2.5-3 mm slices seen from
#: a ~1 mm plan) and noise bounded for z-scored data.
INTENSITY_AUGMENTATION = {
    "low_resolution_zoom": [[0.5, 1.0], [0.5, 1.0], [0.3, 1.0]],
    "low_resolution_probability": 0.3,
    "blur_sigma": [0.4, 1.1],
    "blur_probability": 0.2,
    "noise_variance": [0.0, 0.06],
    "noise_probability": 0.2,
    "brightness": [0.75, 1.25],
    "brightness_probability": 0.2,
    "contrast": [0.65, 1.5],
    "contrast_probability": 0.3,
    "gamma": [0.7, 1.5],
    "gamma_probability": 0.3,
}

PAPER_BLOCK = [20, 20, 16]
PAPER_FIRST_KERNELS = [5, 5, 3]

#: Network widths per preset.
WIDTHS = {
    "paper": {  # Chen & Dou's widths
        "screening": [64, 64, 128, 128, 256],
        "discrimination": [64, 64, 128, 128],
        "fc_features": 512,
        "segmentation": [32, 64, 128, 256],
    },
    "fast": {  # a quarter of Chen & Dou's widths (a sixteenth of the convolution cost)
        "screening": [16, 16, 32, 32, 64],
        "discrimination": [16, 16, 32, 32],
        "fc_features": 128,
        "segmentation": [8, 16, 32, 64],
    },
    "tiny": {
        "screening": [8, 8, 16, 16, 32],
        "discrimination": [8, 8, 16, 16],
        "fc_features": 32,
        "segmentation": [4, 8, 16, 32],
    },
}
#: The default (preset auto): Chen & Dou's widths, except a half-width screening FCN. Its second 5x5x3 convolution
#: runs at full resolution and holds 77% of the multiply-adds; at half width, over 88 held-out-site subjects, the
#: default models found 289 of 304 microbleeds with 68 false positives (Chen & Dou's width: 291, 67), and a
#: realistic 1.5 T case took 8.2 s instead of 19.1 s (documentation/benchmarks.md, 6h).
WIDTHS["auto"] = {**WIDTHS["paper"], "screening": [32, 32, 64, 64, 128]}


# ----------------------------------------------------------------------------------------------------------
# target spacing
# ----------------------------------------------------------------------------------------------------------
def target_spacing_from_cases(spacings: np.ndarray, shapes: np.ndarray) -> tuple[list[float], str]:
    """Median spacing per axis, except for a coarse, thin axis, which gets its 10th percentile (nnU-Net rule).

    Why: the median keeps most cases near their native resolution. When one axis is much coarser and has few
    voxels (thick-slice scans), the median would throw away the finer scans' detail on that axis, so nnU-Net
    takes a lower percentile there.
    """
    spacings = np.asarray(spacings, dtype=float).reshape(-1, 3)
    shapes = np.asarray(shapes, dtype=float).reshape(-1, 3)
    target = np.percentile(spacings, 50, axis=0)
    sizes = np.percentile(shapes, 50, axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(3) if a != worst]
    aniso_spacing = target[worst] > ANISOTROPY_THRESHOLD * max(target[others])
    aniso_voxels = sizes[worst] * ANISOTROPY_THRESHOLD < min(sizes[others])
    rule = "median spacing per axis over the training cases"
    if aniso_spacing and aniso_voxels:
        low = float(np.percentile(spacings[:, worst], 10))
        if low < max(target[others]):  # never finer than the other axes
            low = max(max(target[others]), low) + 1e-5
        target[worst] = low
        rule += (
            f"; axis {'xyz'[worst]} is > {ANISOTROPY_THRESHOLD:g}x coarser than the others and has < 1/"
            f"{ANISOTROPY_THRESHOLD:g} of their median voxels, so it uses the 10th percentile of its spacings"
        )
    else:
        rule += f"; anisotropy rule (coarsest axis > {ANISOTROPY_THRESHOLD:g}x the others and < 1/3 their voxels) not triggered"
    return [float(s) for s in target], rule


# ----------------------------------------------------------------------------------------------------------
# CMB box
# ----------------------------------------------------------------------------------------------------------
def cmb_extents_vox(extents_mm: np.ndarray, target_spacing: Sequence[float]) -> np.ndarray:
    """Bounding-box extent of each CMB in voxels at the target spacing, rounded up (a partial voxel is a voxel)."""
    ext = np.asarray(extents_mm, dtype=float).reshape(-1, 3) / np.asarray(target_spacing, dtype=float)
    return np.ceil(ext - 1e-6).astype(int)


def quantile_box(extents: np.ndarray, quantile: float) -> tuple[list[int], float]:
    """Smallest box, grown along the extents' per-axis order statistics, that fully holds >= ``quantile`` of CMBs.

    The candidate boxes are ``b(k) = (k-th smallest x extent, k-th smallest y, k-th smallest z)``; each axis
    alone covers ``(k+1)/N`` of the CMBs, so the search starts at the per-axis ``quantile`` and grows ``k``
    until the fraction of CMBs fitting in *all three* axes at once reaches ``quantile``. Coverage grows with
    ``k``, so a binary search finds the smallest such box. Returns the box and its achieved coverage.
    """
    extents = np.asarray(extents, dtype=int).reshape(-1, 3)
    n = len(extents)
    if n == 0:
        raise CMBUNetError("cannot size the CMB box: the fingerprint contains no CMB")
    if not 0 < quantile <= 1:
        raise CMBUNetError(f"the CMB box quantile must be in (0, 1], got {quantile}")
    ordered = np.sort(extents, axis=0)

    def coverage(k: int) -> float:
        return float(np.mean(np.all(extents <= ordered[k], axis=1)))

    lo = max(0, int(math.ceil(quantile * n - 1e-9)) - 1)
    hi = n - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if coverage(mid) >= quantile - 1e-12:  # 984/1000 must count as 0.984
            hi = mid
        else:
            lo = mid + 1
    return [int(v) for v in ordered[lo]], coverage(lo)


# ----------------------------------------------------------------------------------------------------------
# network topologies
# ----------------------------------------------------------------------------------------------------------
def first_kernel_sizes(target_spacing: Sequence[float]) -> list[int]:
    """Odd kernel nearest ``5 * min_spacing / spacing`` per axis, clipped to [3, 5] (Chen & Dou: 5,5,3 at
    0.49x0.49x0.8).

    Why: Chen & Dou's 5x5x3 kernel spans about the same millimetres on every axis; scaling by spacing keeps that
    for other resolutions. Ties (exactly 4) go to 5.
    """
    sp = np.asarray(target_spacing, dtype=float)
    raw = 5.0 * sp.min() / sp
    odd = 2 * np.floor((raw - 1) / 2 + 0.5) + 1
    return [int(v) for v in np.clip(odd, MIN_FIRST_KERNEL, MAX_FIRST_KERNEL)]


# ----------------------------------------------------------------------------------------------------------
# assembling the plans
# ----------------------------------------------------------------------------------------------------------
RULES = {
    "cmb_box.box_vox": "the extent box (each CMB's bounding box in mm divided by the target spacing, rounded up; "
                       "smallest box holding the quantile of CMBs in all three axes) plus max_translation_vox "
                       "context on each side, so a translated positive still contains its whole CMB",
    "screening.block_size": "cmb_box.box_vox rounded up per axis to the next B = 2*(k1-1) + 2*(4+k5), k5 >= 1, "
                            "the sizes the screening FCN maps to 1x1x1",
    "screening.fcn_offset": "block_size // 2: output voxel j classifies the block centred at 2*j + block//2",
    "screening.network.first_kernels": "odd number nearest 5*min(target_spacing)/spacing per axis, clipped to [3, 5]",
    "screening.network.last_kernel": "k5 = (block - 2*(k1-1))/2 - 4, so the block maps to 1x1x1",
    "discrimination.block_size": "screening block + 4 per axis (Chen & Dou: 20x20x16 -> 24x24x20)",
    "segmentation.patch_size": "smallest multiple of 8 (three 2x downsamplings) >= 1.5x the screening block",
    "segmentation.network.foreground_prior": "0.5 * cmb_box.median_cmb_voxels / patch voxels (half the training "
                                             "patches hold a CMB), clipped to [1e-5, 1e-2]: the output layer's "
                                             "starting CMB probability",
    "inference.nms_size_vox": "screening block // 4 made odd, at least 3: one candidate per CMB while neighbouring "
                              "CMBs a few voxels apart stay separate candidates (each is segmented in its own patch)",
    "inference.tile_size": "near 160x160x80 with (tile - block) even so FCN tile outputs abut; >= 2x block",
    "resampling.separate_z": "max/min target spacing > anisotropy_threshold",
    "training": "gpu: Chen & Dou's values (segmentation loss Dice + CE; paper preset: Dice); cpu: a budget for "
                "2 cores (the default plan trained 24 realistic subjects in 23-30 min); fast: a short trial; "
                "tiny: tests",
}


def _fingerprint_arrays(fingerprint: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-case spacings, crop shapes, and per-CMB extents in mm from a fingerprint (see ``fingerprint.py``)."""
    cases = fingerprint.get("cases")
    if not cases:
        raise CMBUNetError("the fingerprint lists no training case; cannot plan")
    spacings = np.array([c["spacing"] for c in cases], dtype=float)
    shapes = np.array([c["shape_after_crop"] for c in cases], dtype=float)
    extents = np.array([c["extent_mm"] for c in fingerprint.get("cmbs", [])], dtype=float).reshape(-1, 3)
    return spacings, shapes, extents


def _channel_names(dataset_json: dict) -> dict:
    names = dataset_json.get("channel_names") or dataset_json.get("modality")
    if not names:
        raise CMBUNetError("dataset.json has no 'channel_names'; cannot plan the number of input channels")
    return {str(k): v for k, v in names.items()}


def _median_cmb_voxels(fingerprint: dict, target_spacing: Sequence[float]) -> float:
    """Median CMB volume in voxels at the target spacing; a fingerprint without volumes (hand-written) gets the
    volume of the ellipsoid in each CMB's box."""
    volumes_mm3 = np.array([c.get("volume_mm3", np.pi / 6 * np.prod(c["extent_mm"]))
                            for c in fingerprint.get("cmbs", [])], dtype=float)
    return float(np.median(volumes_mm3) / np.prod(target_spacing))


def _cmb_box_section(extents_mm: np.ndarray, target_spacing: Sequence[float], quantile: float,
                     median_cmb_voxels: float) -> dict:
    """``plans["cmb_box"]``: the box holding ``quantile`` of the CMBs plus the translation context."""
    extent_box, coverage = quantile_box(cmb_extents_vox(extents_mm, target_spacing), quantile)
    return {
        "quantile": quantile,
        "box_vox": [e + 2 * MAX_TRANSLATION_VOX for e in extent_box],
        "num_cmbs": int(len(extents_mm)),
        "extent_vox": extent_box,
        "coverage": coverage,
        "context_vox": MAX_TRANSLATION_VOX,
        "median_cmb_voxels": round(median_cmb_voxels, 3),
        "rule": (
            f"smallest box, grown along the per-axis order statistics of the CMB extents (voxels at the "
            f"target spacing), that holds >= {quantile:g} of the CMBs in all three axes "
            f"(extent_vox, covering {coverage:.3f}), plus {MAX_TRANSLATION_VOX} voxels of context per side"
        ),
    }


def _network_sections(preset: str, in_channels: int, target_spacing: Sequence[float], box: Sequence[int],
                      median_cmb_voxels: float) -> dict[str, dict]:
    """``plans["screening"]``, ``["discrimination"]`` and ``["segmentation"]``: block and patch sizes, and each
    network's topology."""
    if preset == "paper":
        block, first = list(PAPER_BLOCK), list(PAPER_FIRST_KERNELS)
        last = last_kernel_for_block(block, first)
    else:
        first = first_kernel_sizes(target_spacing)
        block, last = screening_block_for_box(box, first)
    widths = WIDTHS[preset]
    seg_patch = segmentation_patch_size(block, len(widths["segmentation"]))
    return {
        "screening": {
            "block_size": block,
            "fcn_stride": [FCN_STRIDE] * 3,
            "fcn_offset": [b // 2 for b in block],
            "network": {"in_channels": in_channels, "features": list(widths["screening"]), "first_kernels": first,
                        "last_kernel": last, "num_classes": 2, "negative_slope": 0.01},
        },
        "discrimination": {
            "block_size": [b + DISCRIMINATION_EXTRA_VOX for b in block],
            "network": {"in_channels": in_channels, "features": list(widths["discrimination"]),
                        "first_kernels": list(first), "fc_features": widths["fc_features"], "dropout": 0.5,
                        "num_classes": 2, "negative_slope": 0.01},
        },
        "segmentation": {
            "patch_size": seg_patch,
            "network": {"in_channels": in_channels, "features": list(widths["segmentation"]), "num_classes": 2,
                        "negative_slope": 0.01,
                        "foreground_prior": segmentation_foreground_prior(median_cmb_voxels, seg_patch)},
        },
    }


def _resampling_section(target_spacing: Sequence[float]) -> dict:
    return {
        "image_order": 3,
        "image_order_z": 0,
        "separate_z": needs_separate_z(target_spacing),
        "anisotropy_threshold": ANISOTROPY_THRESHOLD,
        "label_rule": "linear interpolation of the mask, threshold 0.5",
    }


def _augmentation_section() -> dict:
    return {
        "max_translation_vox": MAX_TRANSLATION_VOX,
        "max_rotation_deg": 10.0,
        "flip_axes": [0],
        "flip_probability": 0.5,
        "rotation_probability": 0.5,
        "intensity": copy.deepcopy(INTENSITY_AUGMENTATION),
    }


def _rules(preset: str) -> dict[str, str]:
    """The ``rules`` table: :data:`RULES`, with the sizes preset paper fixes regardless of the data."""
    rules = dict(RULES)
    if preset == "paper":
        rules["screening.block_size"] = "preset paper: Chen & Dou's 20x20x16 regardless of the data"
        rules["screening.network.first_kernels"] = "preset paper: Chen & Dou's 5x5x3"
    return rules


def plan_experiment(
    fingerprint: dict,
    dataset_json: dict,
    preset: str = "auto",
    overrides: list[str] | None = None,
    dataset_name: str = "",
    cmb_quantile: float = DEFAULT_CMB_QUANTILE,
) -> Plans:
    """Derive the full plans (:class:`Plans`, fields in ``plans.md``) from a fingerprint; overrides are applied
    last."""
    if preset not in PRESETS:
        raise CMBUNetError(f"unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
    spacings, shapes, extents_mm = _fingerprint_arrays(fingerprint)
    if len(extents_mm) == 0:
        raise CMBUNetError(
            "the training set contains no CMB (every label map is empty after binarisation); cmbunet needs "
            "annotated CMBs to size its blocks and to train"
        )
    channels = _channel_names(dataset_json)
    target, spacing_rule = target_spacing_from_cases(spacings, shapes)
    median_cmb_voxels = _median_cmb_voxels(fingerprint, target)
    cmb_box = _cmb_box_section(extents_mm, target, cmb_quantile, median_cmb_voxels)
    networks = _network_sections(preset, len(channels), target, cmb_box["box_vox"], median_cmb_voxels)
    block = networks["screening"]["block_size"]

    plans = {
        "plans_version": PLANS_VERSION,
        "dataset_name": dataset_name,
        "preset": preset,
        "channel_names": channels,
        "num_input_channels": len(channels),
        "target_spacing": target,
        "target_spacing_rule": spacing_rule,
        "normalization": {"scheme": "zscore_foreground_per_case", "background_value": 0.0},
        "resampling": _resampling_section(target),
        "cmb_box": cmb_box,
        **networks,
        "augmentation": _augmentation_section(),
        "training": training_schedules(preset),
        "inference": {
            "screening_threshold": PAPER_SCREENING_THRESHOLD if preset == "paper" else SCREENING_THRESHOLD,
            "nms_size_vox": nms_size(block),
            "max_candidates": 1000,
            "discrimination_threshold": 0.5,
            "discrimination_shift_vox": 1,
            "discrimination_aggregate": "max",
            "discrimination_mirror": True,
            "shape_max_elongation": 2.0,
            "shape_max_diameter_mm": 10.0,
            "shape_round_elongation": 1.5,
            "shape_round_threshold": 0.5,
            "location_max_csf_share": LOCATION_MAX_CSF_SHARE,
            "shape_min_blob_ratio": SHAPE_MIN_BLOB_RATIO,
            "shape_max_inplane_elongation": SHAPE_MAX_INPLANE_ELONGATION,
            "unsegmented_spot_max_diameter_mm": 4.0,
            "components_need_candidate": True,
            "segmentation_threshold": 0.5,
            "tile_size": tile_size(block),
        },
        "rules": _rules(preset),
        "overrides": [],
    }
    return apply_overrides(Plans.from_dict(plans), overrides)
