"""How much the dark spot under each candidate curves like a ball, as opposed to a tube: the evidence that
separates a microbleed from a vein seen end-on or cut short by thick slices.

A vein is dark along its course and curves only across it, so one eigenvalue of the image's Hessian at its
darkest point is near zero; a microbleed curves the same way in every direction. The ratio of the smallest to the
largest eigenvalue (the "blobness" of Frangi's vesselness filter and its relatives) is therefore near 1 for a
ball, near 0 for a tube and negative at a saddle (a spot on a dark line). It is computed at one scale, in
millimetres, only at the candidates: each Hessian entry is one dot product of the box around the spot with a
second-derivative-of-Gaussian kernel, so all candidates cost one matrix product.

Thick slices blur a ball along the slice axis, which lowers its ratio; :func:`round_spot_blob_ratio` gives the
ratio a small round microbleed shows on a scan's voxels, and the rule compares ratios relative to it, as the shape
rule scales its elongation limit.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from cmbunet.inference.shape import REFERENCE_SPOT_DIAMETER_MM
from cmbunet.utilities.patches import extract_patches

#: Scale (mm) of the Gaussian the curvature is measured at: the radius of a small microbleed.
BLOB_SIGMA_MM = 1.0
#: The kernel reaches this many sigmas.
KERNEL_REACH = 3.0


def hessian_kernels(spacing: Sequence[float], sigma_mm: float | Sequence[float] = BLOB_SIGMA_MM
                    ) -> tuple[np.ndarray, tuple[int, ...]]:
    """A Gaussian of ``sigma_mm`` (one, or one per axis) and its second derivatives, sampled on voxels of
    ``spacing``: ``(V, 7)`` kernels giving, at a box's centre, the smoothed value and the Hessian entries xx, yy,
    zz, xy, xz, yz; and the box size (odd, per axis)."""
    spacing = np.asarray(spacing, dtype=float)
    sigma = np.broadcast_to(np.asarray(sigma_mm, dtype=float), (3,))
    half = np.maximum(1, np.ceil(KERNEL_REACH * sigma / spacing)).astype(int)
    axes = [np.arange(-h, h + 1) * s for h, s in zip(half, spacing)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)  # (V, 3) mm
    gauss = np.exp(-0.5 * np.sum((grid / sigma) ** 2, axis=1))
    gauss /= gauss.sum()
    pairs = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))
    kernels = np.stack([gauss] + [gauss * (grid[:, i] * grid[:, j] / (sigma[i] ** 2 * sigma[j] ** 2)
                                           - (i == j) / sigma[i] ** 2) for i, j in pairs], axis=1)
    return kernels, tuple(int(2 * h + 1) for h in half)


def blob_ratios(image: np.ndarray, centres: np.ndarray, spacing: Sequence[float],
                sigma_mm: float | Sequence[float] = BLOB_SIGMA_MM) -> np.ndarray:
    """Smallest over largest eigenvalue of the Hessian (at ``sigma_mm``) where the image smoothed at that scale is
    darkest among each centre and its 26 neighbours, for a 3D ``image`` with voxel ``spacing`` (mm), ``(N,)``: near
    1 for a dark ball, near 0 for a dark tube, below 0 on a dark line or where the spot is not a minimum; NaN where
    the largest eigenvalue is not positive (no dark spot). The smoothed minimum, not the darkest raw voxel, is the
    spot's centre at that scale: noise moves the latter onto a ball's flank, where it curves less one way. Voxels
    beyond the image count as 0, like the background of a skull-stripped scan."""
    centres = np.asarray(centres, dtype=np.int64).reshape(-1, 3)
    n = len(centres)
    if n == 0:
        return np.zeros(0)
    kernels, size = hessian_kernels(spacing, sigma_mm)
    grown = extract_patches(np.asarray(image, dtype=np.float32), centres, [s + 2 for s in size], pad_value=0.0)
    per_offset = np.stack([grown[:, i: i + size[0], j: j + size[1], k: k + size[2]].reshape(n, -1) @ kernels
                           for i in range(3) for j in range(3) for k in range(3)], axis=1)  # (N, 27, 7)
    entries = per_offset[np.arange(n), per_offset[:, :, 0].argmin(axis=1), 1:].astype(np.float64)
    xx, yy, zz, xy, xz, yz = entries.T
    hessian = np.stack([np.stack([xx, xy, xz], -1), np.stack([xy, yy, yz], -1), np.stack([xz, yz, zz], -1)], 1)
    eig = np.linalg.eigvalsh(hessian)  # ascending
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(eig[:, 2] > 0, eig[:, 0] / eig[:, 2], np.nan)


def round_spot_blob_ratio(spacing: Sequence[float], diameter_mm: float = REFERENCE_SPOT_DIAMETER_MM,
                          sigma_mm: float | Sequence[float] = BLOB_SIGMA_MM) -> float:
    """The ratio :func:`blob_ratios` gives for a round spot of ``diameter_mm`` imaged with voxels of ``spacing``:
    1 on isotropic voxels, less on thick slices. The curvature along an axis of a Gaussian-like spot falls as
    ``1 / (v + sigma**2)`` with its spread ``v`` (the ball's ``d**2 / 20`` plus the voxel's ``s**2 / 12``)."""
    spread = float(diameter_mm) ** 2 / 20.0 + np.asarray(spacing, dtype=float) ** 2 / 12.0 + np.asarray(sigma_mm, dtype=float) ** 2
    return float(spread.min() / spread.max())


def blob_sigma(original_spacing: Sequence[float], sigma_mm: float = BLOB_SIGMA_MM) -> np.ndarray:
    """Per-axis scale (mm) for a scan acquired with voxels of ``original_spacing``: ``sigma_mm``, widened along
    thick slices to three quarters of the slice, so that the curvature across slices is measured over the blur the
    slices gave the spot rather than over one sample of it."""
    return np.maximum(float(sigma_mm), 0.75 * np.asarray(original_spacing, dtype=float))


def relative_blob_ratios(image: np.ndarray, centres: np.ndarray, spacing: Sequence[float],
                         original_spacing: Sequence[float]) -> np.ndarray:
    """:func:`blob_ratios` at each centre of a preprocessed ``image`` (voxels of ``spacing``) as a share of
    :func:`round_spot_blob_ratio` on the scan's own voxels (``original_spacing``), both at :func:`blob_sigma`: about
    1 for a microbleed on any scan, about 0 or below for a vein."""
    sigma = blob_sigma(original_spacing)
    return blob_ratios(image, centres, spacing, sigma) / round_spot_blob_ratio(original_spacing, sigma_mm=sigma)
