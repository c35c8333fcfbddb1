"""The arithmetic of the three networks' geometry, shared by the planner, the overrides and the schema's checks.

The screening FCN is the one place with a hard constraint: its valid convolutions must map the block to exactly
1x1x1, which fixes the last kernel once the first kernels and the block are chosen (see
:func:`screening_layer_sizes`). Everything here is pure arithmetic on sizes; nothing reads ``Plans`` or plans
files (the consistency checks of a whole ``Plans``, which use this arithmetic, are ``schema.consistency_problems``).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from cmbunet.errors import CMBUNetError

ANISOTROPY_THRESHOLD = 3.0
FCN_STRIDE = 2  # one 2x2x2 max-pool in the screening FCN
MID_CONVS = 2  # C3, C4: two 3x3x3 valid convs after the pool, each removes 2 voxels
DISCRIMINATION_EXTRA_VOX = 4  # Chen & Dou (VALDO 2021): 20x20x16 -> 24x24x20
SEGMENTATION_FACTOR = 1.5  # Chen & Dou: 20x20x16 -> 32x32x24
SEGMENTATION_POSITIVE_FRACTION = 0.5  # segmentation samples are positives and screening FPs, 1:1
NOMINAL_TILE = (160, 160, 80)  # the tile of Chen & Dou's reference code, in voxels


def needs_separate_z(target_spacing: Sequence[float], threshold: float = ANISOTROPY_THRESHOLD) -> bool:
    """Resample the coarse axis separately (order 0) when max/min spacing exceeds ``threshold`` (nnU-Net)."""
    return bool(max(target_spacing) / min(target_spacing) > threshold)



def _block_for_trunk(first_kernel: int, trunk: int) -> int:
    """The block side whose trunk output is ``trunk`` voxels (the inverse of :func:`_trunk_output`)."""
    return 2 * (first_kernel - 1) + 2 * (2 * MID_CONVS + trunk)


def _trunk_output(block: Sequence[int], first_kernels: Sequence[int]) -> tuple[list[int], int | None]:
    """Per-axis size after the valid trunk that the screening FCN and the discrimination CNN share (C1, C2 with
    kernel k1, a 2x pool, C3, C4 with kernel 3), and the first axis where the block does not fit (odd before the
    pool, or nothing left after C4); None when it fits on every axis."""
    sizes, bad = [], None
    for axis, (b, k1) in enumerate(zip(block, first_kernels)):
        rest = int(b) - 2 * (int(k1) - 1)
        sizes.append(rest // 2 - 2 * MID_CONVS)
        if bad is None and (rest % 2 or sizes[-1] < 1):
            bad = axis
    return sizes, bad


def screening_block_for_box(box_vox: Sequence[int], first_kernels: Sequence[int]) -> tuple[list[int], list[int]]:
    """Round a box up to the next block the screening FCN maps to 1x1x1; return ``(block, last_kernel)``.

    With C1, C2 (kernel k1), a 2x pool, C3, C4 (kernel 3) and C5 (kernel k5), all valid, a block B reaches
    1 voxel iff ``B = 2*(k1-1) + 2*(4 + k5)`` with ``k5 >= 1``.
    """
    block, last = [], []
    for b, k1 in zip(box_vox, first_kernels):
        k5 = max(1, int(math.ceil((int(b) - 2 * (k1 - 1)) / 2 - (2 * MID_CONVS))))
        last.append(k5)
        block.append(_block_for_trunk(k1, k5))
    return block, last


def last_kernel_for_block(block: Sequence[int], first_kernels: Sequence[int]) -> list[int]:
    """The C5 kernel that maps ``block`` to 1x1x1, the trunk's output size; raise when the block has none."""
    sizes, axis = _trunk_output(block, first_kernels)
    if axis is not None:
        k1 = first_kernels[axis]
        valid = [_block_for_trunk(k1, k) for k in range(1, 5)]
        raise CMBUNetError(
            f"screening block {list(block)} with first kernel {k1} on axis {'xyz'[axis]} cannot be mapped to "
            f"1x1x1 by the screening FCN; valid sizes on that axis are {valid}, ..."
        )
    return sizes


def screening_layer_sizes(block: Sequence[int], first_kernels: Sequence[int], last_kernel: Sequence[int]) -> list[list[int]]:
    """Spatial size after each screening layer (input, C1, C2, M1, C3, C4, C5, C6), as in Chen & Dou's Table 1."""
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
    """Spatial size of the discrimination CNN's last conv output, the trunk's (Chen & Dou: 4x4x4 for 24x24x20); raise if
    invalid."""
    sizes, axis = _trunk_output(block, first_kernels)
    if axis is not None:
        raise CMBUNetError(
            f"discrimination block {list(block)} is too small or odd for first kernel {first_kernels[axis]} on axis "
            f"{'xyz'[axis]}: need (block - 2*(k1-1)) even and (block - 2*(k1-1))/2 - 4 >= 1"
        )
    return sizes


def segmentation_patch_size(screening_block: Sequence[int], num_levels: int = 4) -> list[int]:
    """Smallest multiple of ``2**(num_levels-1)`` that is >= 1.5x the screening block (Chen & Dou: 32x32x24)."""
    divisor = 2 ** (num_levels - 1)
    return [int(divisor * math.ceil(SEGMENTATION_FACTOR * b / divisor - 1e-9)) for b in screening_block]


def segmentation_foreground_prior(median_cmb_voxels: float, patch_size: Sequence[int],
                                  positive_fraction: float = SEGMENTATION_POSITIVE_FRACTION) -> float:
    """Expected CMB fraction of a segmentation training patch, the U-Net output layer's starting probability.

    Half of the training patches hold one CMB (the others are screening false positives), so the expected
    fraction is ``0.5 * median CMB voxels / patch voxels`` (1.5e-3 for a 14 mm3 CMB at 0.49x0.49x0.8 mm in
    Chen & Dou's 32x32x24 patch). Starting the output there rather than at a generic 1% matters for the batch Dice:
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


def nms_size(block: Sequence[int]) -> list[int]:
    """NMS neighbourhood in input voxels: block // 4, odd, at least 3 (Chen & Dou's block 20x20x16 -> 5x5x5)."""
    return [max(3, (int(b) // 4) | 1) for b in block]
