"""Acquisition geometry and image formation of synthetic cases.

The scanner side of a case: head tilt and oblique slice directions, the field of view, tissue contrasts per
modality, anatomy evaluated on a coarse grid and upsampled, and Rician noise. Every function draws from the
generator it is given, in a fixed order, so a case depends on its seed alone.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
import torch

from cmbunet.synthetic import anatomy as anat
from cmbunet.synthetic.lesions import Grid

MODALITIES = ("T2S", "T1", "T2")
#: Anatomy is evaluated on a grid at most this fine (mm), then linearly upsampled: it is smooth anyway.
ANATOMY_RESOLUTION_MM = 1.5


# ---------------------------------------------------------------------------------------------- geometry


def random_rotation(rng: np.random.Generator, max_deg: float, min_deg: float = 0.0) -> np.ndarray:
    """Rotation about a random axis by an angle in [min_deg, max_deg]: head tilt, oblique slices, object poses."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(min_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def small_spacing(rng: np.random.Generator) -> np.ndarray:
    """Spacing of the quick-test world (no named site): 0.8-1.3 mm pixels, 1-2.5 mm slices."""
    inplane, slc = rng.uniform(0.8, 1.3), rng.uniform(1.0, 2.5)
    y = inplane * (rng.uniform(0.95, 1.05) if rng.random() < 0.2 else 1.0)  # rare non-square pixels
    return np.array([inplane, y, slc])


def grid_shape(semi: np.ndarray, tilt: np.ndarray, spacing: np.ndarray, size: str) -> tuple[int, int, int]:
    """Field of view: the tilted brain's extent plus a margin of background, at least 32 voxels per axis."""
    half = np.sqrt(((tilt * semi[None, :]) ** 2).sum(axis=1)) * 1.15
    margin = 4.0 if size == "small" else 12.0
    shape = np.ceil((2 * half + 2 * margin) / spacing).astype(int)
    return tuple(int(s) for s in np.maximum(shape, 32))


# -------------------------------------------------------------------------------------------------- anatomy


def anatomy_grid(grid: Grid) -> tuple[tuple[int, ...], np.ndarray, list[np.ndarray]]:
    """Integer down-sampling factors and the image-frame mm coordinates (1D per axis) of the coarse voxels."""
    factors = np.maximum(1, np.floor(ANATOMY_RESOLUTION_MM / grid.spacing)).astype(int)
    cshape = tuple(int(np.ceil(s / f)) for s, f in zip(grid.shape, factors))
    axes = [((np.arange(n) * f + (f - 1) / 2.0) * sp - c).astype(np.float32)
            for n, f, sp, c in zip(cshape, factors, grid.spacing, grid.centre_mm)]
    return cshape, factors, axes


def tissue_on_grid(params, axes: list[np.ndarray], tilt: np.ndarray, voxel_mm: np.ndarray,
                    coarse_mm: float) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Tissue fractions of the coarse anatomy voxels.

    The template is sampled at points, so a thick voxel (a 3 mm slice) is averaged over sub-samples about 1 mm
    apart across its extent: partial volume across the slice is what makes thick-slice scans look different.
    The phantom's fractions already carry a partial-volume width.
    """
    if isinstance(params, anat.AnatomyParams):
        return params.tissue_fractions(anat.Coords(*np.meshgrid(*axes, indexing="ij", sparse=True), tilt), coarse_mm)
    counts = [int(np.ceil(v / 1.0)) if v > 1.2 else 1 for v in voxel_mm]
    offsets = [((np.arange(n) + 0.5) / n - 0.5) * v for n, v in zip(counts, voxel_mm)]
    total_frac: dict[str, np.ndarray] | None = None
    total_phi = None
    for d in itertools.product(*offsets):
        co = anat.Coords(*np.meshgrid(*[a + np.float32(o) for a, o in zip(axes, d)], indexing="ij", sparse=True), tilt)
        frac, phi = params.tissue_fractions(co, coarse_mm)
        if total_frac is None:
            total_frac, total_phi = frac, phi
        else:
            for t in total_frac:
                total_frac[t] += frac[t]
            total_phi += phi
    n = float(np.prod(counts))
    return {t: v / np.float32(n) for t, v in total_frac.items()}, total_phi / np.float32(n)


def upsample(arr: np.ndarray, factors: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Trilinear upsampling by integer factors (coarse voxel centres sit at the centre of their fine block)."""
    if np.all(factors == 1):
        return arr
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None, None]
    size = [int(n * f) for n, f in zip(arr.shape, factors)]
    up = torch.nn.functional.interpolate(t, size=size, mode="trilinear", align_corners=False)[0, 0]
    return up[: shape[0], : shape[1], : shape[2]].numpy()


# ------------------------------------------------------------------------------------------------ contrast


def modality_rng(seed: int, modality: str) -> np.random.Generator:
    """Own random stream per contrast, so a case's T2* image is the same whichever other contrasts are asked for."""
    return np.random.default_rng([int(seed), 1 + MODALITIES.index(modality)])


def tissue_contrasts(seed: int, modalities: Sequence[str], iron: bool, gm_wm_gain: float = 1.0) -> dict[str, dict[str, float]]:
    """Tissue contrasts per modality; ``gm_wm_gain`` scales the grey/white difference (field strength, TE)."""
    out = {}
    for m in modalities:
        rng = modality_rng(seed, m)
        base = anat.BASE_CONTRAST[m]
        c = {t: base[t] * rng.uniform(0.93, 1.07) for t in anat.TISSUES}
        if gm_wm_gain != 1.0:
            for t in ("gm", "deep_gm"):
                c[t] = c["wm"] + (c[t] - c["wm"]) * gm_wm_gain
        if m == "T2S" and iron:
            c["deep_gm"] = c["wm"] * rng.uniform(0.55, 0.8)  # iron-laden nuclei: darker than white matter
        elif m == "T2" and iron:
            c["deep_gm"] = c["wm"] * rng.uniform(0.85, 1.0)
        out[m] = c
    return out


# -------------------------------------------------------------------------------------------------- signal


def acquire(signal: np.ndarray, brain: np.ndarray, sigma: float, scale: float, offset: float,
            rng: np.random.Generator) -> np.ndarray:
    """Rician noise (magnitude of complex Gaussian noise), site scale/offset, zero outside the brain.

    Works on the brain voxels only (``signal = image[brain]``): half the work, and background is exactly 0.
    """
    noise = rng.standard_normal(signal.shape, dtype=np.float32)
    noise *= np.float32(sigma)
    signal += noise
    np.square(signal, out=signal)
    rng.standard_normal(out=noise, dtype=np.float32)
    noise *= np.float32(sigma)
    np.square(noise, out=noise)
    signal += noise
    np.sqrt(signal, out=signal)
    signal += np.float32(offset)
    signal *= np.float32(scale)
    out = np.zeros(brain.shape, dtype=np.float32)
    out[brain] = signal
    return out
