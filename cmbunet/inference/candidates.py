"""From a screening score map to candidate centres: threshold, 3D non-maximum suppression, exact mapping."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cmbunet.inference.screening import score_voxels_to_input


def find_candidates(
    score_map: np.ndarray,
    plans: dict,
    threshold: float | None = None,
    nms_size: int | list[int] | None = None,
    max_candidates: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima of ``score_map`` above ``threshold``, as input-voxel centres ``(N, 3)`` and scores ``(N,)``.

    NMS keeps a voxel when it is the maximum of its neighbourhood of ``nms_size`` input voxels (converted to
    score voxels with the FCN stride); a plateau of equal maxima yields one candidate. Candidates are sorted by
    descending score and capped at ``max_candidates``. Nothing above the threshold gives empty arrays (the
    reference code returned a spurious centre candidate instead).
    """
    inf = plans.get("inference", {})
    threshold = inf.get("screening_threshold", 0.1) if threshold is None else threshold
    nms_size = inf.get("nms_size_vox", [10, 10, 8]) if nms_size is None else nms_size
    max_candidates = inf.get("max_candidates", 1000) if max_candidates is None else max_candidates
    stride = np.asarray(plans["screening"].get("fcn_stride", [2, 2, 2]))
    nms = np.broadcast_to(np.asarray(nms_size), (3,))
    footprint = tuple(int(max(1, 2 * (n // (2 * s)) + 1)) for n, s in zip(nms, stride))  # odd, centred

    above = score_map >= threshold
    if not above.any():
        return np.zeros((0, 3), dtype=np.int64), np.zeros(0, dtype=np.float32)
    local_max = ndimage.maximum_filter(score_map, size=footprint, mode="constant", cval=-np.inf)
    peaks = above & (score_map == local_max)
    labels, n = ndimage.label(peaks, structure=np.ones((3, 3, 3)))
    positions = np.asarray(ndimage.maximum_position(score_map, labels, np.arange(1, n + 1)), dtype=np.int64).reshape(-1, 3)
    scores = score_map[tuple(positions.T)].astype(np.float32)
    order = np.argsort(-scores, kind="stable")[:max_candidates]
    return score_voxels_to_input(positions[order], plans), scores[order]
