"""Resampling between the original voxel grid and the target spacing.

All resampling here uses one geometric convention, the one of ``scipy.ndimage.zoom(..., grid_mode=True)`` and
scikit-image's ``resize``: the *outer edges* of the two grids coincide, so output voxel ``j`` of an axis resized
from ``n_in`` to ``n_out`` voxels samples the input at ``(j + 0.5) * n_in / n_out - 0.5``. Using the same rule
forwards (preprocessing) and backwards (:func:`cmbunet.preprocessing.preprocessor.export_to_native`) is what
makes a prediction land on the voxels it was made for.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

#: Spacings closer than this (relative) are treated as equal, so an image already at the target is not resampled.
SPACING_RTOL = 1e-3


def compute_new_shape(shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float]) -> list[int]:
    """Voxel count per axis that covers the same physical extent at ``target_spacing`` (at least 1)."""
    shape_a = np.asarray(shape, dtype=float)
    ratio = np.asarray(spacing, dtype=float) / np.asarray(target_spacing, dtype=float)
    return [int(v) for v in np.maximum(np.round(shape_a * ratio), 1).astype(int)]


def spacing_equal(a: Sequence[float], b: Sequence[float]) -> bool:
    """True when two spacings agree within :data:`SPACING_RTOL`; then resampling is skipped altogether."""
    return bool(np.allclose(np.asarray(a, float), np.asarray(b, float), rtol=SPACING_RTOL, atol=0))


def source_coordinates(n_out: int, n_in: int) -> np.ndarray:
    """Input coordinate sampled by each output voxel of one axis (edge-aligned grids), clamped to the input."""
    coords = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    return np.clip(coords, 0.0, n_in - 1.0)


def map_points_to_new_grid(points: np.ndarray, old_shape: Sequence[int], new_shape: Sequence[int]) -> np.ndarray:
    """Map continuous voxel positions ``(N, 3)`` from the old grid to the new one (inverse of the sampling rule)."""
    scale = np.asarray(new_shape, dtype=float) / np.asarray(old_shape, dtype=float)
    return (np.asarray(points, dtype=float) + 0.5) * scale - 0.5


def separate_axis(
    spacing: Sequence[float], target_spacing: Sequence[float], force: bool, anisotropy_threshold: float
) -> int | None:
    """Axis to resample on its own at low order, or ``None``.

    nnU-Net's rule: when the original (or the target) spacing is anisotropic beyond ``anisotropy_threshold``
    (max/min), a cubic spline across thick slices rings badly, so the coarse axis is resampled separately with
    nearest-neighbour. ``force`` (the plans' ``separate_z``) applies the rule to every case, on the z axis unless
    the case's own coarse axis is unambiguous.
    """
    for sp in (np.asarray(spacing, float), np.asarray(target_spacing, float)):
        if sp.max() / sp.min() > anisotropy_threshold:
            coarse = np.flatnonzero(sp == sp.max())
            return int(coarse[0]) if len(coarse) == 1 else 2
    return 2 if force else None


@functools.lru_cache(maxsize=64)
def interpolation_matrix(n_in: int, n_out: int, order: int) -> np.ndarray:
    """``(n_out, n_in)`` matrix of 1D spline resampling (prefilter included), read off ``ndimage.zoom``.

    A tensor-product spline is separable, so resampling a volume is one small matrix product per axis. That
    runs through BLAS on all cores, instead of ``zoom``'s single-threaded 64-tap 3D kernel, with identical
    values (same convention, same boundary handling).
    """
    eye = np.eye(n_in, dtype=np.float64)
    m = ndi.zoom(eye, (n_out / n_in, 1.0), order=order, mode="nearest", grid_mode=True)
    assert m.shape == (n_out, n_in), (m.shape, n_out, n_in)
    m = m.astype(np.float32)
    m.setflags(write=False)  # cached and shared: must not be modified
    return m


def resample_axis(arr: np.ndarray, axis: int, n_out: int, order: int) -> np.ndarray:
    """Resample one axis of an array to ``n_out`` voxels; float32."""
    m = interpolation_matrix(int(arr.shape[axis]), int(n_out), int(order))
    out = np.tensordot(m, arr, axes=([1], [axis]))  # one BLAS call; the resampled axis comes first
    return np.ascontiguousarray(np.moveaxis(out, 0, axis), dtype=np.float32)


def resample_array(arr: np.ndarray, new_shape: Sequence[int], order: int) -> np.ndarray:
    """Resample one ``(X, Y, Z)`` array to ``new_shape`` with a spline of ``order``; returns float32."""
    out = np.asarray(arr, dtype=np.float32)
    if tuple(out.shape) == tuple(new_shape):
        return out.copy()
    for axis, n in enumerate(new_shape):
        if out.shape[axis] != n:
            out = resample_axis(out, axis, int(n), order)
    return out


def resample_image(
    arr: np.ndarray, new_shape: Sequence[int], order: int = 3, order_z: int = 0, sep_axis: int | None = None
) -> np.ndarray:
    """Resample one image channel; with ``sep_axis`` the other two axes use ``order`` and that one ``order_z``."""
    if sep_axis is None or arr.shape[sep_axis] == new_shape[sep_axis]:
        return resample_array(arr, new_shape, order)
    in_plane = list(new_shape)
    in_plane[sep_axis] = arr.shape[sep_axis]
    return resample_array(resample_array(arr, in_plane, order), new_shape, order_z)


def resample_mask(mask: np.ndarray, new_shape: Sequence[int]) -> np.ndarray:
    """Resample a binary mask by linear interpolation and threshold at 0.5 (the label rule of the plans)."""
    if tuple(mask.shape) == tuple(new_shape):
        return np.asarray(mask, dtype=bool).copy()
    return resample_array(np.asarray(mask, dtype=np.float32), new_shape, order=1) >= 0.5


def linear_owner(
    component_labels: np.ndarray, points_new: np.ndarray, new_shape: Sequence[int]
) -> np.ndarray:
    """For new-grid voxels ``(N, 3)``, the original component contributing most to their linear interpolation.

    Each new voxel is a weighted sum of its 8 surrounding original voxels; the component among them with the
    largest weight "owns" it (0 when none of the 8 belongs to a component). Vectorised over the N voxels.
    """
    old_shape = component_labels.shape
    if len(points_new) == 0:
        return np.zeros(0, dtype=component_labels.dtype)
    coords = np.stack(
        [source_coordinates(new_shape[a], old_shape[a])[points_new[:, a]] for a in range(3)], axis=1
    )  # (N, 3)
    lo = np.floor(coords).astype(np.int64)
    frac = coords - lo
    best_w = np.full(len(coords), -1.0)
    owner = np.zeros(len(coords), dtype=component_labels.dtype)
    for corner in np.ndindex(2, 2, 2):
        c = np.asarray(corner)
        idx = np.minimum(lo + c, np.asarray(old_shape) - 1)
        w = np.prod(np.where(c == 1, frac, 1.0 - frac), axis=1)
        lab = component_labels[idx[:, 0], idx[:, 1], idx[:, 2]]
        better = (lab > 0) & (w > best_w)
        owner[better] = lab[better]
        best_w[better] = w[better]
    return owner
