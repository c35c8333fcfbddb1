"""Segmentation of the kept candidates: the U-Net on one patch per candidate, merged into one probability map.

Patches of neighbouring candidates overlap. Their probabilities are merged as in nnU-Net's sliding window:
each patch is weighted by a Gaussian importance map (sigma = patch/8, highest at the patch centre, where the
network has the most context), weighted probabilities and weights are accumulated, and the sum is divided
by the weights. Voxels that no patch covers stay 0. Kept candidates at small dark spots that the U-Net leaves
empty are written as their spot (:func:`add_unsegmented_spots`), and components that hold no kept candidate are
dropped (:func:`components_at_candidates`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from torch import nn

from cmbunet.inference.discrimination import PaddedVolume, block_probabilities
from cmbunet.inference.shape import DarkSpots
from cmbunet.plans.schema import Plans
from cmbunet.utilities.autocast import ForwardOptions
from cmbunet.utilities.components import label_components
from cmbunet.utilities.patches import extract_patches


def gaussian_importance(patch_size: Sequence[int], sigma_scale: float = 1.0 / 8) -> np.ndarray:
    """Separable Gaussian weights over a patch, maximum 1 at its centre (strictly positive everywhere)."""
    axes = []
    for n in patch_size:
        x = np.arange(int(n), dtype=np.float64) - (int(n) - 1) / 2.0
        sigma = max(float(n) * sigma_scale, 1e-6)
        axes.append(np.exp(-0.5 * (x / sigma) ** 2))
    g = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    g = g / g.max()
    return np.maximum(g, 1e-6).astype(np.float32)


def merge_patches(patches: np.ndarray, centres: np.ndarray, shape: Sequence[int], weights: np.ndarray) -> np.ndarray:
    """Weighted average of overlapping ``(N, *P)`` patches placed at ``centres`` in a volume of ``shape``.

    Accumulates on a grid padded by one patch so border patches need no clipping; 0 where no patch lies.
    """
    p = np.asarray(patches.shape[1:], dtype=np.int64)
    shape = np.asarray(shape, dtype=np.int64)
    acc = np.zeros(shape + 2 * p, dtype=np.float32)
    wsum = np.zeros_like(acc)
    starts = np.asarray(centres, dtype=np.int64).reshape(-1, 3) - p // 2 + p
    for patch, (x, y, z) in zip(patches, starts):  # one vectorised slice update per patch
        sl = (slice(x, x + p[0]), slice(y, y + p[1]), slice(z, z + p[2]))
        acc[sl] += patch * weights
        wsum[sl] += weights
    inner = tuple(slice(int(a), int(a + n)) for a, n in zip(p, shape))
    acc, wsum = acc[inner], wsum[inner]
    out = np.zeros(tuple(int(s) for s in shape), dtype=np.float32)
    np.divide(acc, wsum, out=out, where=wsum > 0)
    return out


def segment_candidates(networks: Sequence[nn.Module], volume: np.ndarray, centres: np.ndarray, plans: Plans,
                       forward: ForwardOptions = ForwardOptions(batch_size=32)) -> np.ndarray:
    """CMB probability map ``(X, Y, Z)`` of ``volume`` ``(C, X, Y, Z)`` from U-Net patches at ``centres``, run
    ``forward.batch_size`` patches at a time.

    With several networks (folds) each patch's probabilities are averaged over the folds before merging, which
    equals averaging the folds' merged maps because all folds use the same patches and weights.
    """
    shape = tuple(int(s) for s in volume.shape[1:])
    centres = np.asarray(centres, dtype=np.int64).reshape(-1, 3)
    if len(centres) == 0:
        return np.zeros(shape, dtype=np.float32)
    patch = [int(s) for s in plans.segmentation.patch_size]
    pad_value = float(plans.normalization.background_value)
    padded = PaddedVolume.for_blocks(volume, patch, pad_value)
    probs = block_probabilities(networks, padded, centres, patch, forward, item_shape=patch)
    return merge_patches(probs, centres, shape, gaussian_importance(patch))


def add_unsegmented_spots(probabilities: np.ndarray, spots: DarkSpots, centres: np.ndarray, scores: np.ndarray,
                          threshold: float) -> tuple[np.ndarray, int]:
    """Write each dark spot in which ``probabilities`` stays below ``threshold`` everywhere, with its candidate's
    discrimination probability, into a copy of ``probabilities``; returns it and how many spots were written.

    Why: the U-Net sees few microbleeds of one or two voxels and leaves some of them empty, although
    discrimination kept their candidate and the shape rule found a small round spot there
    (documentation/experiments.md, section 6f). A spot the U-Net segmented anywhere is left to it. Spots reaching
    past the volume are clipped.
    """
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    if len(scores) == 0:
        return probabilities, 0
    index, voxels = spots.voxels(centres)
    inside = np.all((voxels >= 0) & (voxels < np.array(probabilities.shape)), axis=1)
    index, voxels = index[inside], voxels[inside]
    peak = np.full(len(scores), -np.inf, dtype=np.float32)
    np.maximum.at(peak, index, probabilities[tuple(voxels.T)])
    empty = np.isfinite(peak) & (peak < float(threshold))
    if not empty.any():
        return probabilities, 0
    out = probabilities.copy()
    write = empty[index]
    np.maximum.at(out, tuple(voxels[write].T), scores[index[write]])
    return out, int(empty.sum())


def components_at_candidates(probabilities: np.ndarray, centres: np.ndarray, threshold: float,
                             reach_vox: int = 2) -> tuple[np.ndarray, int]:
    """``probabilities`` with every component (voxels at or above ``threshold``, 26-connected) that comes within
    ``reach_vox`` voxels (a box) of no kept candidate's centre set to 0; returns it and how many were dropped.

    Why: each U-Net patch spans about 25 mm, so next to a kept candidate it also segments dark spots that
    discrimination never judged, such as the other lobes of a calcification. A written CMB should be one that
    discrimination kept; the U-Net only delineates it (documentation/experiments.md, section 6f).
    """
    labels, n = label_components(np.asarray(probabilities) >= float(threshold))
    if n == 0:
        return probabilities, 0
    centres = np.asarray(centres, dtype=np.int64).reshape(-1, 3)
    reached = np.zeros(n + 1, dtype=bool)
    if len(centres):
        box = extract_patches(labels, centres, (2 * reach_vox + 1,) * 3)
        reached[np.unique(box)] = True
    reached[0] = True  # the background stays as it is
    if reached.all():
        return probabilities, 0
    out = np.asarray(probabilities).copy()
    out[~reached[labels]] = 0.0
    return out, int((~reached).sum())
