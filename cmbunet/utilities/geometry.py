"""Voxel and world coordinates of an image, and bounding boxes of masks.

Bounding boxes follow the convention of ``acvl_utils`` and nnU-Net: ``[[x0, x1], [y0, y1], [z0, z1]]``,
half-open per axis (``[start, stop)``, as Python slices), plain ints. :func:`mask_bbox` gives what
``acvl_utils.cropping_and_padding.bounding_boxes.get_bbox_from_mask`` gives (the tests compare the two), from
the three axis projections instead of slice-by-slice scans. It is not imported from there because that module
imports torch and blosc2, seconds in every preprocessing, fingerprint and evaluation worker process, which need
neither.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

#: Half-open ``[start, stop)`` per axis.
BoundingBox = list[list[int]]


def direction_matrix(geometry: Mapping[str, Any]) -> np.ndarray:
    """The 3x3 direction cosines of an image (column ``a``: the world direction of voxel axis ``a``)."""
    return np.asarray(geometry["direction"], dtype=float).reshape(3, 3)


def voxel_to_world(points: np.ndarray, geometry: Mapping[str, Any]) -> np.ndarray:
    """World positions (mm) of continuous voxel positions ``(n, 3)``, as SimpleITK defines them:
    origin + direction @ (index * spacing)."""
    scaled = np.asarray(points, dtype=float).reshape(-1, 3) * np.asarray(geometry["spacing"], dtype=float)
    return np.asarray(geometry["origin"], dtype=float) + scaled @ direction_matrix(geometry).T


def world_to_voxel(points: np.ndarray, geometry: Mapping[str, Any]) -> np.ndarray:
    """Continuous voxel positions of world points ``(n, 3)``; the inverse of :func:`voxel_to_world`."""
    offset = np.asarray(points, dtype=float).reshape(-1, 3) - np.asarray(geometry["origin"], dtype=float)
    return np.linalg.solve(direction_matrix(geometry), offset.T).T / np.asarray(geometry["spacing"], dtype=float)


def mask_bbox_or_none(mask: np.ndarray) -> BoundingBox | None:
    """Half-open bounding box of the non-zero voxels of ``mask``; ``None`` when there are none."""
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if not len(hits):
            return None
        box.append([int(hits[0]), int(hits[-1]) + 1])
    return box


def mask_bbox(mask: np.ndarray) -> BoundingBox:
    """Half-open bounding box of the non-zero voxels of ``mask``; the whole array when there are none
    (``get_bbox_from_mask``'s rule)."""
    box = mask_bbox_or_none(mask)
    return box if box is not None else [[0, int(s)] for s in mask.shape]


def bounding_box_to_slice(bbox: Sequence[Sequence[int]]) -> tuple[slice, ...]:
    """Slices selecting a half-open bounding box."""
    return tuple(slice(int(a), int(b)) for a, b in bbox)
