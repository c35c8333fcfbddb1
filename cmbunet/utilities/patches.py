"""Cutting many blocks out of a volume in one vectorised step.

Block convention used everywhere in cmbunet: a block of size ``B`` centred at voxel ``c`` covers
``[c - B//2, c - B//2 + B)`` per axis. Blocks that reach outside the volume are filled with ``pad_value``
(0 = background after normalisation).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def block_starts(centres: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Lower corner of each block: ``c - B//2``."""
    return np.asarray(centres, dtype=np.int64).reshape(-1, 3) - np.asarray(size, dtype=np.int64) // 2


def extract_patches(
    volume: np.ndarray, centres: np.ndarray, size: Sequence[int], pad_value: float = 0.0
) -> np.ndarray:
    """Return ``(N, C, *size)`` blocks of a ``(C, X, Y, Z)`` volume (or ``(N, *size)`` for a 3D volume).

    The volume is padded at most once per call, and only when some block reaches outside it; the blocks are
    gathered with one fancy-indexing operation on a sliding-window view (no Python loop over blocks).
    """
    squeeze = volume.ndim == 3
    vol = volume[None] if squeeze else volume
    size = tuple(int(s) for s in size)
    starts = block_starts(centres, size)
    if len(starts) == 0:
        out = np.zeros((0, vol.shape[0], *size), dtype=vol.dtype)
        return out[:, 0] if squeeze else out
    shape = np.asarray(vol.shape[1:])
    pad_lo = np.maximum(0, -starts.min(axis=0))
    pad_hi = np.maximum(0, (starts + size).max(axis=0) - shape)
    if pad_lo.any() or pad_hi.any():
        vol = np.pad(vol, [(0, 0)] + [(int(lo), int(hi)) for lo, hi in zip(pad_lo, pad_hi)], constant_values=pad_value)
        starts = starts + pad_lo
    windows = sliding_window_view(vol, size, axis=(1, 2, 3))  # (C, X-B+1, Y-B+1, Z-B+1, Bx, By, Bz)
    patches = windows[:, starts[:, 0], starts[:, 1], starts[:, 2]]  # (C, N, Bx, By, Bz)
    patches = np.ascontiguousarray(np.moveaxis(patches, 0, 1))
    return patches[:, 0] if squeeze else patches


def central_label(seg_patches: np.ndarray) -> np.ndarray:
    """``True`` for each patch with a CMB voxel in its central 2x2x2 block ``[c-1, c+1)`` (the reference code's rule).

    Accepts ``(N, X, Y, Z)`` or ``(N, 1, X, Y, Z)``.
    """
    seg = seg_patches[:, 0] if seg_patches.ndim == 5 else seg_patches
    c = [s // 2 for s in seg.shape[1:]]
    core = seg[:, c[0] - 1 : c[0] + 1, c[1] - 1 : c[1] + 1, c[2] - 1 : c[2] + 1]
    return core.reshape(len(seg), -1).any(axis=1)
