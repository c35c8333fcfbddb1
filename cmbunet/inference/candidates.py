"""From a screening score map to candidate centres: threshold, 3D non-maximum suppression, exact mapping."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from cmbunet.inference.screening import score_voxels_to_input
from cmbunet.plans.schema import Plans
from cmbunet.utilities.components import label_components


def nms_footprint(plans: Plans, nms_size: int | Sequence[int] | None = None) -> tuple[int, int, int]:
    """The odd, centred NMS window in score voxels: ``nms_size`` input voxels divided by the FCN stride."""
    nms_size = plans.inference.nms_size_vox if nms_size is None else nms_size
    stride = np.asarray(plans.screening.fcn_stride)
    nms = np.broadcast_to(np.asarray(nms_size), (3,))
    return tuple(int(max(1, 2 * (n // (2 * s)) + 1)) for n, s in zip(nms, stride))


def decision_boxes(score_map: np.ndarray, plans: Plans, threshold: float | None = None,
                   nms_size: int | Sequence[int] | None = None, margin: float = 0.05) -> list[tuple[slice, ...]]:
    """Boxes of score voxels that decide the candidates when ``score_map`` may be off by less than ``margin``.

    A voxel can be a candidate only if its exact score reaches ``threshold``, i.e. where the approximate score is
    at least ``threshold - margin``; whether it is depends on the scores in its NMS window. Recomputing the scores
    exactly inside these boxes (those voxels grown by the NMS window) therefore gives exactly the candidates of
    the exact map.
    """
    threshold = plans.inference.screening_threshold if threshold is None else threshold
    near = score_map >= threshold - margin
    if not near.any():
        return []
    grown = ndimage.binary_dilation(near, structure=np.ones(nms_footprint(plans, nms_size), dtype=bool))
    labels, _ = label_components(grown)
    return [box for box in ndimage.find_objects(labels) if box is not None]


def find_candidates(
    score_map: np.ndarray,
    plans: Plans,
    threshold: float | None = None,
    nms_size: int | list[int] | None = None,
    max_candidates: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima of ``score_map`` above ``threshold``, as input-voxel centres ``(N, 3)`` and scores ``(N,)``.

    NMS keeps a voxel when it is the maximum of its neighbourhood of ``nms_size`` input voxels (converted to
    score voxels with the FCN stride); within a neighbourhood, a plateau of equal maxima yields one candidate. Candidates are sorted by
    descending score and capped at ``max_candidates``. Nothing above the threshold gives empty arrays (the
    reference code returned a spurious centre candidate instead).
    """
    inf = plans.inference
    threshold = inf.screening_threshold if threshold is None else threshold
    nms_size = inf.nms_size_vox if nms_size is None else nms_size
    max_candidates = inf.max_candidates if max_candidates is None else max_candidates
    footprint = nms_footprint(plans, nms_size)

    above = score_map >= threshold
    if not above.any():
        return np.zeros((0, 3), dtype=np.int64), np.zeros(0, dtype=np.float32)
    # Ties (e.g. saturated plateaus of 1.0) are broken by position with a perturbation far below the float32
    # resolution of the scores, so exactly one voxel of a plateau survives and distinct values keep their order.
    key = score_map.astype(np.float64) - 1e-12 * (np.arange(score_map.size).reshape(score_map.shape) / score_map.size)
    local_max = ndimage.maximum_filter(key, size=footprint, mode="constant", cval=-np.inf)
    positions = np.argwhere(above & (key == local_max)).astype(np.int64)
    scores = score_map[tuple(positions.T)].astype(np.float32)
    order = np.argsort(-scores, kind="stable")[:max_candidates]
    return score_voxels_to_input(positions[order], plans), scores[order]
