"""Turn a dataset fingerprint into ``plans.json``: target spacing, block sizes, network topologies, schedules.

Every derived number is written next to the rule that produced it (``target_spacing_rule``, ``cmb_box.rule``
and the ``rules`` table), so a plans file explains itself. The screening FCN is the one place with a hard
constraint: its valid convolutions must map the block to exactly 1x1x1, which fixes the last kernel once
the first kernels and the block are chosen (see :func:`screening_layer_sizes`).
"""

from __future__ import annotations

import copy
import math
from typing import Sequence

import numpy as np

from cmbunet.errors import CMBUNetError

PRESETS = ("auto", "fast", "paper", "tiny")
STAGES = ("screening", "discrimination", "segmentation")
PLANS_VERSION = 1

DEFAULT_CMB_QUANTILE = 0.984  # 002: "98.4% of CMBs can be covered by a bounding box of this size"
ANISOTROPY_THRESHOLD = 3.0
FCN_STRIDE = 2  # one 2x2x2 max-pool in the screening FCN
MID_CONVS = 2  # C3, C4: two 3x3x3 valid convs after the pool, each removes 2 voxels
MIN_FIRST_KERNEL, MAX_FIRST_KERNEL = 3, 5
DISCRIMINATION_EXTRA_VOX = 4  # 002: 20x20x16 -> 24x24x20
SEGMENTATION_FACTOR = 1.5  # 002: 20x20x16 -> 32x32x24
#: Cases screened by each intermediate mining pass of the CPU schedule (the final pass screens all): whole-volume
#: screening of every training case dominates CPU training on VALDO-sized scans.
CPU_MINING_CASES = 16
SEGMENTATION_POSITIVE_FRACTION = 0.5  # segmentation samples are positives and screening FPs, 1:1
NOMINAL_TILE = (160, 160, 80)  # 002 reference code's tile, in voxels
MAX_TRANSLATION_VOX = 3  # 002: "translation (< 4 voxels)"

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

WIDTHS = {
    "full": {
        "screening": [64, 64, 128, 128, 256],
        "discrimination": [64, 64, 128, 128],
        "fc_features": 512,
        "segmentation": [32, 64, 128, 256],
    },
    "quarter": {  # preset fast: a quarter of 002's widths (a sixteenth of the convolution cost)
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


def needs_separate_z(target_spacing: Sequence[float], threshold: float = ANISOTROPY_THRESHOLD) -> bool:
    """Resample the coarse axis separately (order 0) when max/min spacing exceeds ``threshold`` (nnU-Net)."""
    return bool(max(target_spacing) / min(target_spacing) > threshold)


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
    """Odd kernel nearest ``5 * min_spacing / spacing`` per axis, clipped to [3, 5] (002: 5,5,3 at 0.49x0.49x0.8).

    Why: 002's 5x5x3 kernel spans about the same millimetres on every axis; scaling by spacing keeps that for
    other resolutions. Ties (exactly 4) go to 5.
    """
    sp = np.asarray(target_spacing, dtype=float)
    raw = 5.0 * sp.min() / sp
    odd = 2 * np.floor((raw - 1) / 2 + 0.5) + 1
    return [int(v) for v in np.clip(odd, MIN_FIRST_KERNEL, MAX_FIRST_KERNEL)]


def screening_block_for_box(box_vox: Sequence[int], first_kernels: Sequence[int]) -> tuple[list[int], list[int]]:
    """Round a box up to the next block the screening FCN maps to 1x1x1; return ``(block, last_kernel)``.

    With C1, C2 (kernel k1), a 2x pool, C3, C4 (kernel 3) and C5 (kernel k5), all valid, a block B reaches
    1 voxel iff ``B = 2*(k1-1) + 2*(4 + k5)`` with ``k5 >= 1``.
    """
    block, last = [], []
    for b, k1 in zip(box_vox, first_kernels):
        k5 = max(1, int(math.ceil((int(b) - 2 * (k1 - 1)) / 2 - (2 * MID_CONVS))))
        last.append(k5)
        block.append(2 * (k1 - 1) + 2 * (2 * MID_CONVS + k5))
    return block, last


def last_kernel_for_block(block: Sequence[int], first_kernels: Sequence[int]) -> list[int]:
    """The C5 kernel that maps ``block`` to 1x1x1; raise when no valid kernel exists for this block."""
    out = []
    for axis, (b, k1) in enumerate(zip(block, first_kernels)):
        rest = int(b) - 2 * (int(k1) - 1)
        k5 = rest // 2 - 2 * MID_CONVS
        if rest % 2 or k5 < 1:
            valid = [2 * (k1 - 1) + 2 * (2 * MID_CONVS + k) for k in range(1, 5)]
            raise CMBUNetError(
                f"screening block {list(block)} with first kernel {k1} on axis {'xyz'[axis]} cannot be mapped to "
                f"1x1x1 by the screening FCN; valid sizes on that axis are {valid}, ..."
            )
        out.append(int(k5))
    return out


def screening_layer_sizes(block: Sequence[int], first_kernels: Sequence[int], last_kernel: Sequence[int]) -> list[list[int]]:
    """Spatial size after each screening layer (input, C1, C2, M1, C3, C4, C5, C6), as in 002 Table 1."""
    size = np.asarray(block, dtype=int)
    k1 = np.asarray(first_kernels, dtype=int)
    sizes = [size]
    for kernel in (k1, k1):
        sizes.append(sizes[-1] - kernel + 1)
    sizes.append(sizes[-1] // FCN_STRIDE)
    for kernel in (3, 3, np.asarray(last_kernel, dtype=int), 1):
        sizes.append(sizes[-1] - kernel + 1)
    return [[int(v) for v in s] for s in sizes]


def discrimination_feature_size(block: Sequence[int], first_kernels: Sequence[int]) -> list[int]:
    """Spatial size of the discrimination CNN's last conv output (002: 4x4x4 for 24x24x20); raise if invalid."""
    out = []
    for axis, (b, k1) in enumerate(zip(block, first_kernels)):
        rest = int(b) - 2 * (int(k1) - 1)
        size = rest // 2 - 2 * MID_CONVS
        if rest % 2 or size < 1:
            raise CMBUNetError(
                f"discrimination block {list(block)} is too small or odd for first kernel {k1} on axis "
                f"{'xyz'[axis]}: need (block - 2*(k1-1)) even and (block - 2*(k1-1))/2 - 4 >= 1"
            )
        out.append(int(size))
    return out


def segmentation_patch_size(screening_block: Sequence[int], num_levels: int = 4) -> list[int]:
    """Smallest multiple of ``2**(num_levels-1)`` that is >= 1.5x the screening block (002: 32x32x24)."""
    divisor = 2 ** (num_levels - 1)
    return [int(divisor * math.ceil(SEGMENTATION_FACTOR * b / divisor - 1e-9)) for b in screening_block]


def segmentation_foreground_prior(median_cmb_voxels: float, patch_size: Sequence[int],
                                  positive_fraction: float = SEGMENTATION_POSITIVE_FRACTION) -> float:
    """Expected CMB fraction of a segmentation training patch, the U-Net output layer's starting probability.

    Half of the training patches hold one CMB (the others are screening false positives), so the expected
    fraction is ``0.5 * median CMB voxels / patch voxels`` (1.5e-3 for a 14 mm3 CMB at 0.49x0.49x0.8 mm in
    002's 32x32x24 patch). Starting the output there rather than at a generic 1% matters for the batch Dice:
    1% of every patch voxel can outweigh the CMB voxels tens of times, and the U-Net then spends its first
    epochs shrinking background mass before Dice sees a lesion at all. Clipped to [1e-5, 1e-2].
    """
    fraction = positive_fraction * max(float(median_cmb_voxels), 1.0) / float(np.prod(patch_size))
    return float(np.clip(fraction, 1e-5, 1e-2))


def tile_size(screening_block: Sequence[int], nominal: Sequence[int] = NOMINAL_TILE) -> list[int]:
    """Whole-volume FCN tile near ``nominal`` with ``tile - block`` a multiple of the stride, so tile outputs abut.

    A tile of size T yields ``(T - B)/2 + 1`` output voxels; with ``T - B`` even, consecutive tiles overlapping
    by ``B - 2`` voxels cover the score map exactly. Never smaller than twice the block.
    """
    out = []
    for b, t in zip(screening_block, nominal):
        t = max(int(t), 2 * int(b))
        out.append(int(b) + FCN_STRIDE * int(round((t - int(b)) / FCN_STRIDE)))
    return out


# ----------------------------------------------------------------------------------------------------------
# schedules
# ----------------------------------------------------------------------------------------------------------
def _schedule(
    epochs: int,
    samples: int,
    batch: int,
    stage: str,
    val_samples: int,
    mining_epochs: Sequence[int] = (),
    segmentation_loss: str = "dice_ce",
    mining_cases: int | None = None,
    mining_keep: str = "all",
    fp_sampling: str = "uniform",
) -> dict:
    """One stage's schedule; optimiser, loss and proportions follow 002 for the stage.

    Segmentation uses soft Dice plus cross-entropy by default: Dice alone (002) learns slowly from scratch on
    lesions that fill ~1% of a patch; the ``paper`` preset keeps 002's plain Dice.
    """
    if stage == "segmentation":
        sched = {"epochs": epochs, "samples_per_epoch": samples, "batch_size": batch,
                 "optimizer": "adam", "lr": 1e-3, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0,
                 "loss": segmentation_loss, "class_weights": None}
    else:
        sched = {"epochs": epochs, "samples_per_epoch": samples, "batch_size": batch,
                 "optimizer": "sgd", "lr": 1e-2, "momentum": 0.99, "nesterov": True, "weight_decay": 0.0,
                 "loss": "weighted_ce", "class_weights": [0.25, 0.75]}
    sched["lr_schedule"] = "poly"
    sched["poly_exponent"] = 0.9
    if stage == "screening":
        sched["proportions"] = {"positive": 1, "negative": 2, "false_positive": 1}
        sched["mining_epochs"] = [int(e) for e in mining_epochs]
        sched["mining_threshold"] = 0.1
        sched["mining_cases"] = mining_cases
        sched["mining_keep"] = mining_keep
    else:
        sched["proportions"] = {"positive": 1, "false_positive": 1}
    if stage == "discrimination":
        sched["fp_sampling"] = fp_sampling
    sched["val_samples"] = val_samples
    return sched


def nms_size(block: Sequence[int]) -> list[int]:
    """NMS neighbourhood in input voxels: block // 4, odd, at least 3 (002 block 20x20x16 -> 5x5x5)."""
    return [max(3, (int(b) // 4) | 1) for b in block]


def gpu_schedules(segmentation_loss: str = "dice_ce") -> dict:
    """002's published schedule (150 x 0.2M, 80 x 0.1M, 100 x 8k samples)."""
    return {
        "screening": _schedule(150, 200_000, 128, "screening", 2000, (50, 80, 120)),
        "discrimination": _schedule(80, 100_000, 128, "discrimination", 2000),
        "segmentation": _schedule(100, 8000, 64, "segmentation", 800, segmentation_loss=segmentation_loss),
    }


def cpu_schedules() -> dict:
    """A budget schedule for full-width networks on a 2-core CPU: roughly 40-60 minutes for all three stages.

    Measured per training sample on 2 cores (full width): screening ~30 ms, discrimination ~50 ms,
    segmentation ~0.35 s. Screening 30k samples ~ 15 min (+ mining), discrimination 12k ~ 10 min,
    segmentation 2k ~ 12 min.
    """
    return {
        "screening": _schedule(20, 1500, 32, "screening", 200, (7, 14), mining_cases=CPU_MINING_CASES),
        "discrimination": _schedule(15, 800, 32, "discrimination", 200),
        "segmentation": _schedule(10, 200, 16, "segmentation", 64),
    }


def fast_schedules() -> dict:
    """The quick-trial budget for quarter-width networks on a 2-core CPU (preset ``fast``; timings and F1 in
    ``documentation/training.md``): discrimination gets most of the samples, because after screening has found
    the CMBs it is what decides the false positives."""
    seg = _schedule(36, 256, 16, "segmentation", 64)
    seg["lr"] = 1e-2
    return {
        "screening": _schedule(10, 1024, 32, "screening", 200, (3, 6), mining_cases=CPU_MINING_CASES),
        "discrimination": _schedule(30, 1024, 32, "discrimination", 200),
        "segmentation": seg,
    }


def tiny_schedules() -> dict:
    """A few seconds of training per stage, for tests: 2-3 epochs x 200 samples, FP mining after epoch 1."""
    return {
        "screening": _schedule(3, 200, 16, "screening", 32, (1,)),
        "discrimination": _schedule(2, 200, 16, "discrimination", 32),
        "segmentation": _schedule(2, 200, 16, "segmentation", 32),
    }


def training_schedules(preset: str) -> dict:
    """``{"gpu": {stage: schedule}, "cpu": {...}}`` for a preset (``paper`` uses 002's values on both)."""
    if preset == "tiny":
        return {"gpu": tiny_schedules(), "cpu": tiny_schedules()}
    if preset == "paper":
        return {"gpu": gpu_schedules("dice"), "cpu": gpu_schedules("dice")}
    if preset == "fast":
        return {"gpu": fast_schedules(), "cpu": fast_schedules()}
    return {"gpu": gpu_schedules(), "cpu": cpu_schedules()}


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
    "discrimination.block_size": "screening block + 4 per axis (002: 20x20x16 -> 24x24x20)",
    "segmentation.patch_size": "smallest multiple of 8 (three 2x downsamplings) >= 1.5x the screening block",
    "segmentation.network.foreground_prior": "0.5 * cmb_box.median_cmb_voxels / patch voxels (half the training "
                                             "patches hold a CMB), clipped to [1e-5, 1e-2]: the output layer's "
                                             "starting CMB probability",
    "inference.nms_size_vox": "screening block // 4 made odd, at least 3: one candidate per CMB while neighbouring "
                              "CMBs a few voxels apart stay separate candidates (each is segmented in its own patch)",
    "inference.tile_size": "near 160x160x80 with (tile - block) even so FCN tile outputs abut; >= 2x block",
    "resampling.separate_z": "max/min target spacing > anisotropy_threshold",
    "training": "gpu: 002's values (segmentation loss Dice + CE; paper preset: Dice); cpu: a budget of about "
                "40-60 min for all stages on 2 cores; tiny: tests",
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


def plan_experiment(
    fingerprint: dict,
    dataset_json: dict,
    preset: str = "auto",
    overrides: list[str] | None = None,
    dataset_name: str = "",
    cmb_quantile: float = DEFAULT_CMB_QUANTILE,
) -> dict:
    """Derive the full plans (schema in ``architecture.md``) from a fingerprint; overrides are applied last."""
    if preset not in PRESETS:
        raise CMBUNetError(f"unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
    spacings, shapes, extents_mm = _fingerprint_arrays(fingerprint)
    # a fingerprint without voxel counts (hand-written) gets the volume of the ellipsoid in each CMB's box
    cmb_volumes_mm3 = np.array([c.get("volume_mm3", np.pi / 6 * np.prod(c["extent_mm"])) for c in fingerprint.get("cmbs", [])],
                               dtype=float)
    if len(extents_mm) == 0:
        raise CMBUNetError(
            "the training set contains no CMB (every label map is empty after binarisation); cmbunet needs "
            "annotated CMBs to size its blocks and to train"
        )
    channels = _channel_names(dataset_json)
    n_in = len(channels)
    target, spacing_rule = target_spacing_from_cases(spacings, shapes)

    extent_box, coverage = quantile_box(cmb_extents_vox(extents_mm, target), cmb_quantile)
    box = [e + 2 * MAX_TRANSLATION_VOX for e in extent_box]
    if preset == "paper":
        block, first = list(PAPER_BLOCK), list(PAPER_FIRST_KERNELS)
        last = last_kernel_for_block(block, first)
    else:
        first = first_kernel_sizes(target)
        block, last = screening_block_for_box(box, first)
    widths = WIDTHS[{"tiny": "tiny", "fast": "quarter"}.get(preset, "full")]
    disc_block = [b + DISCRIMINATION_EXTRA_VOX for b in block]
    seg_patch = segmentation_patch_size(block, len(widths["segmentation"]))
    median_cmb_voxels = float(np.median(cmb_volumes_mm3) / np.prod(target))

    rules = dict(RULES)
    if preset == "paper":
        rules["screening.block_size"] = "preset paper: 002's 20x20x16 regardless of the data"
        rules["screening.network.first_kernels"] = "preset paper: 002's 5x5x3"

    plans = {
        "plans_version": PLANS_VERSION,
        "dataset_name": dataset_name,
        "preset": preset,
        "channel_names": channels,
        "num_input_channels": n_in,
        "target_spacing": target,
        "target_spacing_rule": spacing_rule,
        "normalization": {"scheme": "zscore_foreground_per_case", "background_value": 0.0},
        "resampling": {
            "image_order": 3,
            "image_order_z": 0,
            "separate_z": needs_separate_z(target),
            "anisotropy_threshold": ANISOTROPY_THRESHOLD,
            "label_rule": "linear interpolation of the mask, threshold 0.5",
        },
        "cmb_box": {
            "quantile": cmb_quantile,
            "box_vox": box,
            "num_cmbs": int(len(extents_mm)),
            "extent_vox": extent_box,
            "coverage": coverage,
            "context_vox": MAX_TRANSLATION_VOX,
            "median_cmb_voxels": round(median_cmb_voxels, 3),
            "rule": (
                f"smallest box, grown along the per-axis order statistics of the CMB extents (voxels at the "
                f"target spacing), that holds >= {cmb_quantile:g} of the CMBs in all three axes "
                f"(extent_vox, covering {coverage:.3f}), plus {MAX_TRANSLATION_VOX} voxels of context per side"
            ),
        },
        "screening": {
            "block_size": block,
            "fcn_stride": [FCN_STRIDE] * 3,
            "fcn_offset": [b // 2 for b in block],
            "network": {
                "in_channels": n_in,
                "features": list(widths["screening"]),
                "first_kernels": first,
                "last_kernel": last,
                "num_classes": 2,
                "negative_slope": 0.01,
            },
        },
        "discrimination": {
            "block_size": disc_block,
            "network": {
                "in_channels": n_in,
                "features": list(widths["discrimination"]),
                "first_kernels": list(first),
                "fc_features": widths["fc_features"],
                "dropout": 0.5,
                "num_classes": 2,
                "negative_slope": 0.01,
            },
        },
        "segmentation": {
            "patch_size": seg_patch,
            "network": {
                "in_channels": n_in,
                "features": list(widths["segmentation"]),
                "num_classes": 2,
                "negative_slope": 0.01,
                "foreground_prior": segmentation_foreground_prior(median_cmb_voxels, seg_patch),
            },
        },
        "augmentation": {
            "max_translation_vox": MAX_TRANSLATION_VOX,
            "max_rotation_deg": 10.0,
            "flip_axes": [0],
            "flip_probability": 0.5,
            "rotation_probability": 0.5,
            "intensity": copy.deepcopy(INTENSITY_AUGMENTATION),
        },
        "training": training_schedules(preset),
        "inference": {
            "screening_threshold": 0.1,
            "nms_size_vox": nms_size(block),
            "max_candidates": 1000,
            "discrimination_threshold": 0.5,
            "discrimination_shift_vox": 1,
            "discrimination_aggregate": "max",
            "discrimination_mirror": True,
            "segmentation_threshold": 0.5,
            "tile_size": tile_size(block),
        },
        "rules": rules,
        "overrides": [],
    }
    check_plans(plans)
    if overrides:
        from cmbunet.plans.plans_io import apply_overrides

        plans = apply_overrides(plans, overrides)
    return plans


# ----------------------------------------------------------------------------------------------------------
# consistency after overrides
# ----------------------------------------------------------------------------------------------------------
def _touched(explicit: set[str], key: str) -> bool:
    """True when an override set ``key``, one of its parents or one of its children."""
    return any(e == key or e.startswith(key + ".") or key.startswith(e + ".") for e in explicit)


def rederive(plans: dict, explicit: set[str]) -> dict:
    """Recompute values that depend on overridden ones (unless also overridden), then check consistency.

    Block size and first kernels are the source of truth for the screening FCN: ``last_kernel``,
    ``fcn_offset`` follow always; the discrimination block, segmentation patch, NMS size and tile size follow
    the screening block unless given explicitly. ``separate_z`` follows the target spacing.
    """
    p = copy.deepcopy(plans)
    scr, disc, seg, inf = p["screening"], p["discrimination"], p["segmentation"], p["inference"]
    n_in = int(p["num_input_channels"])
    for stage in STAGES:
        p[stage]["network"]["in_channels"] = n_in
    block, first = scr["block_size"], scr["network"]["first_kernels"]
    scr["network"]["last_kernel"] = last_kernel_for_block(block, first)
    scr["fcn_stride"] = [FCN_STRIDE] * 3
    scr["fcn_offset"] = [int(b) // 2 for b in block]
    screening_changed = _touched(explicit, "screening.block_size") or _touched(explicit, "screening.network.first_kernels")
    if screening_changed:
        if not _touched(explicit, "discrimination.block_size"):
            disc["block_size"] = [int(b) + DISCRIMINATION_EXTRA_VOX for b in block]
        if not _touched(explicit, "discrimination.network.first_kernels"):
            disc["network"]["first_kernels"] = list(first)
    if _touched(explicit, "screening.block_size"):
        if not _touched(explicit, "segmentation.patch_size"):
            seg["patch_size"] = segmentation_patch_size(block, len(seg["network"]["features"]))
        if not _touched(explicit, "inference.nms_size_vox"):
            inf["nms_size_vox"] = nms_size(block)
        if not _touched(explicit, "inference.tile_size"):
            inf["tile_size"] = tile_size(block)
    median_vox = p.get("cmb_box", {}).get("median_cmb_voxels")
    patch_changed = _touched(explicit, "segmentation.patch_size") or _touched(explicit, "screening.block_size")
    if median_vox is not None and patch_changed and not _touched(explicit, "segmentation.network.foreground_prior"):
        seg["network"]["foreground_prior"] = segmentation_foreground_prior(median_vox, seg["patch_size"])
    if _touched(explicit, "target_spacing") and not _touched(explicit, "resampling.separate_z"):
        p["resampling"]["separate_z"] = needs_separate_z(p["target_spacing"], p["resampling"]["anisotropy_threshold"])
    check_plans(p)
    return p


def plans_problems(plans: dict) -> list[str]:
    """Every inconsistency of a plans dict (empty when the three networks can be built and tiled)."""
    problems: list[str] = []
    try:
        scr, disc, seg, inf = plans["screening"], plans["discrimination"], plans["segmentation"], plans["inference"]
        ts = plans["target_spacing"]
        if len(ts) != 3 or min(float(s) for s in ts) <= 0:
            problems.append(f"target_spacing {ts} must be three positive numbers (x, y, z) in mm")
        for name, value in (("screening.block_size", scr["block_size"]), ("discrimination.block_size", disc["block_size"]),
                            ("segmentation.patch_size", seg["patch_size"]), ("inference.tile_size", inf["tile_size"]),
                            ("screening.network.first_kernels", scr["network"]["first_kernels"])):
            if len(value) != 3 or not all(isinstance(v, int) and v > 0 for v in value):
                problems.append(f"{name} {value} must be three positive integers (x, y, z)")
        if problems:
            return problems
        block, first = scr["block_size"], scr["network"]["first_kernels"]
        try:
            last = last_kernel_for_block(block, first)
            if list(scr["network"]["last_kernel"]) != last:
                problems.append(f"screening.network.last_kernel {scr['network']['last_kernel']} should be {last} for block {block}")
        except CMBUNetError as e:
            problems.append(str(e))
        if list(scr["fcn_offset"]) != [b // 2 for b in block]:
            problems.append(f"screening.fcn_offset {scr['fcn_offset']} should be block_size // 2 = {[b // 2 for b in block]}")
        if len(scr["network"]["features"]) != 5:
            problems.append("screening.network.features needs 5 entries (C1, C2, C3, C4, C5)")
        if len(disc["network"]["features"]) != 4:
            problems.append("discrimination.network.features needs 4 entries (C1, C2, C3, C4)")
        try:
            discrimination_feature_size(disc["block_size"], disc["network"]["first_kernels"])
        except CMBUNetError as e:
            problems.append(str(e))
        levels = len(seg["network"]["features"])
        divisor = 2 ** (levels - 1)
        if levels < 2:
            problems.append("segmentation.network.features needs at least 2 entries")
        elif any(int(s) % divisor for s in seg["patch_size"]):
            problems.append(f"segmentation.patch_size {seg['patch_size']} must be a multiple of {divisor} "
                            f"({levels - 1} downsamplings) on every axis")
        for b, t in zip(block, inf["tile_size"]):
            if t < b or (t - b) % FCN_STRIDE:
                problems.append(f"inference.tile_size {inf['tile_size']} must be >= the screening block {block} "
                                f"and differ from it by a multiple of {FCN_STRIDE}")
                break
        for stage in STAGES:
            if int(plans[stage]["network"]["in_channels"]) != int(plans["num_input_channels"]):
                problems.append(f"{stage}.network.in_channels differs from num_input_channels")
    except (KeyError, TypeError, ValueError) as e:
        problems.append(f"missing or malformed entry: {e!r}")
    return problems


def check_plans(plans: dict) -> None:
    """Raise :class:`CMBUNetError` listing every inconsistency of ``plans``."""
    problems = plans_problems(plans)
    if problems:
        raise CMBUNetError("inconsistent plans:\n" + "\n".join(f"  - {p}" for p in problems))
