"""What the dark spot under each candidate does across slices: a vein cut by thick slices goes on, a microbleed
ends.

On 2.5-5 mm slices a vein crossing the slices is a round dot in each one, so neither its outline nor its
curvature tells it from a microbleed: the slice hides its length. A rater scrolls: the vein's dot is there again
in the next slice and the one before, shifted a little along its course; a microbleed of 1-2 mm radius is gone
one slice away on either side. That is measured directly: how dark the image gets within a small disc around
the spot, one acquired slice above and one below, as a share of how dark the spot itself is. The smaller of
the two sides counts, so a microbleed that straddles two slices (dark on one side only) is not mistaken for a
vein, and a vein that runs on through the spot (dark on both sides) is.

The measure is taken on the preprocessed image, at the original slice spacing along the original slice axis,
and only on scans whose slices are thick (:data:`THICK_SLICE_MM`): on thin slices the shape and curvature rules
see a vein's length themselves, and one slice away is still inside a microbleed.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from cmbunet.inference.shape import DarkSpots
from cmbunet.utilities.patches import extract_patches

#: The rule is measured on scans whose thickest voxel axis is at least this long (mm); elsewhere it is NaN
#: (kept). 2 mm: on thinner slices a microbleed of 1-2 mm radius is still dark one slice away.
THICK_SLICE_MM = 2.0
#: Radius (mm) of the in-plane disc searched one slice away: how far an oblique vein's dot moves from slice to
#: slice (a vein at 35 degrees to the slice normal moves 2 mm across 3 mm slices); further and a neighbouring
#: vessel or sulcus counts.
TRACK_RADIUS_MM = 2.0


def slice_offsets(spacing: Sequence[float], original_spacing: Sequence[float]) -> tuple[int, int]:
    """``(axis, voxels)``: the original slice axis (the thickest) and one original slice's length in voxels of
    the preprocessed ``spacing`` (at least 1)."""
    original = np.asarray(original_spacing, dtype=float)
    axis = int(np.argmax(original))
    return axis, max(1, int(round(original[axis] / float(spacing[axis]))))


def continuations(image: np.ndarray, spots: DarkSpots, centres: np.ndarray, spacing: Sequence[float],
                  original_spacing: Sequence[float], radius_mm: float = TRACK_RADIUS_MM) -> np.ndarray:
    """How far each spot (:func:`~cmbunet.inference.shape.dark_spots`, at ``centres`` of a preprocessed 3D
    ``image`` with voxels of ``spacing``) goes on one original slice above and below, ``(N,)``: the darkness
    (box median minus the darkest voxel within ``radius_mm`` in-plane) of the weaker of the two neighbouring
    slices, as a share of the darkness of the spot's own darkest slice. About 0 for a microbleed, about 1 for a
    vein crossing the slices; NaN on thin-slice scans (:data:`THICK_SLICE_MM`), where no spot is found, or where
    a neighbouring slice lies beyond the image.

    All spots at once on their stacked boxes (the boxes :func:`dark_spots` measured), no per-candidate loop.
    """
    centres = np.asarray(centres, dtype=np.int64).reshape(-1, 3)
    n = len(centres)
    out = np.full(n, np.nan)
    if n == 0 or float(np.max(original_spacing)) < THICK_SLICE_MM:
        return out
    axis, step = slice_offsets(spacing, original_spacing)
    boxes = np.moveaxis(extract_patches(np.asarray(image, dtype=np.float32), centres, spots.size,
                                        pad_value=np.nan), axis + 1, -1)  # (N, a, b, slices)
    masks = np.moveaxis(spots.masks, axis + 1, -1)
    inplane = [s for i, s in enumerate(spacing) if i != axis]
    half = [(m - 1) // 2 for m in boxes.shape[1:3]]
    grid = np.meshgrid(*[(np.arange(m) - h) * float(s) for m, h, s in zip(boxes.shape[1:3], half, inplane)],
                       indexing="ij")
    disc = (grid[0] ** 2 + grid[1] ** 2) <= radius_mm**2
    background = np.nanmedian(boxes.reshape(n, -1), axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: beyond the image, or off the spot
        darkest = np.nanmin(np.where(disc[None, :, :, None], boxes, np.nan), axis=(1, 2))  # (N, slices)
        spot_darkest = np.nanmin(np.where(masks, boxes, np.nan), axis=(1, 2))  # (N, slices), NaN off the spot
    has_spot = masks.reshape(n, -1).any(axis=1)
    own = np.nanargmin(np.where(np.isnan(spot_darkest), np.inf, spot_darkest), axis=1)  # the spot's darkest slice
    rows = np.arange(n)
    depth = background[:, None] - darkest
    below = np.clip(own - step, 0, boxes.shape[-1] - 1)
    above = np.clip(own + step, 0, boxes.shape[-1] - 1)
    inside = (own - step >= 0) & (own + step < boxes.shape[-1])
    own_depth = depth[rows, own]
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.minimum(depth[rows, below], depth[rows, above]) / own_depth
    ok = has_spot & inside & (own_depth > 0)
    out[ok] = share[ok]
    return out
