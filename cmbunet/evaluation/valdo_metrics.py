"""The official VALDO 2021 task-2 (cerebral microbleeds) metrics for one case.

The algorithm reproduces the challenge's evaluation code step by step (see ``documentation/evaluation.md``):

1. The prediction is binarised at >= 0.5; the *clipped* prediction keeps the values >= 0.5 and zeroes the
   rest (it is what the volume difference sums). The reference is rounded to 1 decimal and a voxel is a CMB
   when the rounded value is >= 0.5 (for 0/1 label maps this only removes compression noise).
2. Both are split into 26-connected components (one labelling per image).
3. Each component's centre of mass is its mean voxel index times the voxel spacing, in mm; the image origin
   and direction cosines are ignored, as in the official code.
4. Every predicted component links to its nearest reference component when that one is closer than
   ``dist_mm``; otherwise it is a false positive. Of several predictions linked to one reference the nearest
   is the true positive and the others are false positives. An unlinked reference is a false negative.
5. F1 = 2TP / (2TP + FN + FP); Dice = mean over detected references of Dice(reference component, union of
   all predicted components linked to it); count and volume differences are absolute.

Everything is vectorised: one ``ndimage.label`` per image; centres, sizes, the per-reference Dice and the
clipped volume are per-label sums over the labelled voxels only; the linking is one distance matrix. The whole
volume is touched only by the thresholding; the labelling runs on the bounding box of the marked voxels.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from cmbunet.errors import InvalidValueError
from cmbunet.utilities.components import (LabelledVoxels, component_centres, component_maxima, label_components,
                                         labelled_voxels)
from cmbunet.utilities.geometry import bounding_box_to_slice, mask_bbox_or_none

#: Probability at which the prediction becomes a CMB (fixed by the challenge).
PREDICTION_THRESHOLD = 0.5
#: Default linking distance in mm, the value of the VALDO challenge report.
DEFAULT_DIST_MM = 5.0

PRED_COLUMNS = ["label", "x_mm", "y_mm", "z_mm", "volume_vox", "max_prob", "ref_label", "distance_mm", "is_tp"]
REF_COLUMNS = ["label", "x_mm", "y_mm", "z_mm", "volume_vox", "detected"]


def binarise_reference(reference: np.ndarray) -> np.ndarray:
    """Reference mask: round to 1 decimal (removes NIfTI compression noise such as 0.9999), then >= 0.5.

    Only values above 0.4 can round to 0.5 or more, so the float64 rounding runs on those few voxels instead
    of the whole volume; integer labels need no rounding at all.
    """
    ref = np.asarray(reference)
    if ref.dtype == bool:
        return ref.copy()
    if np.issubdtype(ref.dtype, np.integer):
        return ref >= 1
    mask = ref > 0.4
    mask[mask] = np.round(ref[mask].astype(np.float64), 1) >= PREDICTION_THRESHOLD
    return mask


def _foreground_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of the marked voxels (one voxel when there are none): labelling a few CMBs then costs
    their box, not the whole scan. Padding is unnecessary because nothing outside the box is marked."""
    box = mask_bbox_or_none(mask)
    return bounding_box_to_slice(box) if box is not None else (slice(0, 1),) * mask.ndim


def component_centres_mm(
    labels: np.ndarray, n: int, spacing: Sequence[float], foreground: LabelledVoxels | None = None
) -> np.ndarray:
    """(n, 3) centres of mass in mm (mean voxel index x spacing), all components at once.

    Same numbers as ``ndimage.center_of_mass(mask, labels, 1..n)`` times the spacing (see
    :func:`cmbunet.utilities.components.component_centres`).
    """
    return component_centres(labels, n, foreground)[0] * np.asarray(spacing, dtype=np.float64)


def link_components(
    pred_centres: np.ndarray, ref_centres: np.ndarray, dist_mm: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Link predictions to references by centre distance.

    Returns, per predicted component, the 0-based index of the linked reference (-1 when none is closer than
    ``dist_mm``), the distance to the nearest reference (inf when there is none) and whether it is the true
    positive of its reference. When several predictions link to one reference only the nearest is a true
    positive; an exact distance tie goes to the lower component label so a reference is never counted twice.
    """
    n_pred, n_ref = len(pred_centres), len(ref_centres)
    if n_pred == 0 or n_ref == 0:
        return np.full(n_pred, -1), np.full(n_pred, np.inf), np.zeros(n_pred, dtype=bool)
    dist = np.linalg.norm(pred_centres[:, None, :] - ref_centres[None, :, :], axis=-1)
    nearest = np.argmin(dist, axis=1)
    nearest_dist = dist[np.arange(n_pred), nearest]
    linked = np.where(nearest_dist < dist_mm, nearest, -1)
    candidates = np.flatnonzero(linked >= 0)
    # sort the linked predictions by (reference, distance, label); the first of each reference is its TP
    order = candidates[np.lexsort((candidates, nearest_dist[candidates], linked[candidates]))]
    _, first = np.unique(linked[order], return_index=True)
    is_tp = np.zeros(n_pred, dtype=bool)
    is_tp[order[first]] = True
    return linked, nearest_dist, is_tp


def _tp_dice(
    ref_lab: np.ndarray, pred_lab: np.ndarray, ref_at_pred: np.ndarray, linked: np.ndarray, is_tp: np.ndarray
) -> float:
    """Mean Dice over detected references of (reference component, union of its linked predictions).

    ``ref_lab``/``pred_lab`` are the labels of the reference/predicted voxels, ``ref_at_pred`` the reference
    label under each predicted voxel (0 = background).
    """
    tp_refs = linked[is_tp] + 1  # reference labels that were detected
    if tp_refs.size == 0:
        return 0.0
    n = int(ref_lab.max()) + 1
    voxel_link = np.concatenate([[0], linked + 1])[pred_lab]  # reference each predicted voxel is linked to
    ref_size = np.bincount(ref_lab, minlength=n)
    pred_size = np.bincount(voxel_link, minlength=n)
    inter = np.bincount(ref_at_pred[(voxel_link == ref_at_pred) & (voxel_link > 0)], minlength=n)
    dice = 2.0 * inter[tp_refs] / (ref_size[tp_refs] + pred_size[tp_refs])
    return float(np.mean(dice))


def _component_tables(
    pred_lab: np.ndarray,
    ref_lab: np.ndarray,
    pred_values: np.ndarray,
    pred_centres: np.ndarray,
    ref_centres: np.ndarray,
    linked: np.ndarray,
    distance: np.ndarray,
    is_tp: np.ndarray,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per predicted / reference component: centre, size, score and outcome (input to FROC)."""
    n_pred, n_ref = len(pred_centres), len(ref_centres)
    pred_index = np.arange(1, n_pred + 1)
    if n_pred:
        max_prob = component_maxima(pred_values, pred_lab, n_pred)
    else:
        max_prob = np.zeros(0)
    pred = pd.DataFrame(
        {
            "label": pred_index,
            "x_mm": pred_centres[:, 0],
            "y_mm": pred_centres[:, 1],
            "z_mm": pred_centres[:, 2],
            "volume_vox": np.bincount(pred_lab, minlength=n_pred + 1)[1:],
            "max_prob": max_prob,
            "ref_label": np.where(linked >= 0, linked + 1, 0),
            "distance_mm": distance,
            "is_tp": is_tp,
        },
        columns=PRED_COLUMNS,
    )
    detected = np.zeros(n_ref, dtype=bool)
    detected[linked[is_tp]] = True
    ref = pd.DataFrame(
        {
            "label": np.arange(1, n_ref + 1),
            "x_mm": ref_centres[:, 0],
            "y_mm": ref_centres[:, 1],
            "z_mm": ref_centres[:, 2],
            "volume_vox": np.bincount(ref_lab, minlength=n_ref + 1)[1:],
            "detected": detected,
        },
        columns=REF_COLUMNS,
    )
    return pred, ref


def case_metrics(
    reference: np.ndarray,
    prediction: np.ndarray,
    spacing: tuple[float, float, float],
    dist_mm: float = DEFAULT_DIST_MM,
) -> dict[str, Any]:
    """Official VALDO task-2 metrics of one case.

    ``reference`` and ``prediction`` are (X, Y, Z) arrays of one shape (the prediction may hold
    probabilities), ``spacing`` the voxel size in mm. Returns ``f1``, ``dice``, ``count_diff``, ``vol_diff``
    (mm^3), ``tp``, ``fp``, ``fn``, ``n_ref``, ``n_pred`` and two tables, ``pred_components`` and
    ``ref_components`` (pandas DataFrames with centres in mm, sizes, the component's maximum probability and
    whether it is a TP / was detected). F1 and Dice follow the challenge's empty-case rules: an empty
    prediction scores 0, or NaN when the reference is empty too; an empty reference gives NaN.
    """
    reference = np.asarray(reference)
    prediction = np.asarray(prediction)
    if reference.shape != prediction.shape or reference.ndim != 3:
        raise InvalidValueError(f"reference {reference.shape} and prediction {prediction.shape} must be 3D of one "
                                "shape")
    if dist_mm <= 0:
        raise InvalidValueError(f"the linking distance must be positive, got {dist_mm}")
    ref_mask = binarise_reference(reference)
    pred_mask = prediction >= PREDICTION_THRESHOLD
    box = _foreground_box(ref_mask | pred_mask)
    ref_mask, pred_mask, prediction = ref_mask[box], pred_mask[box], prediction[box]
    ref_labels, n_ref = label_components(ref_mask)
    pred_labels, n_pred = label_components(pred_mask)
    ref_fg, pred_fg = labelled_voxels(ref_labels), labelled_voxels(pred_labels)
    # centres in the coordinates of the whole image: crop offset x spacing
    shift_mm = np.array([b.start for b in box], dtype=np.float64) * np.asarray(spacing, dtype=np.float64)
    ref_centres = component_centres_mm(ref_labels, n_ref, spacing, ref_fg) + shift_mm
    pred_centres = component_centres_mm(pred_labels, n_pred, spacing, pred_fg) + shift_mm
    linked, distance, is_tp = link_components(pred_centres, ref_centres, dist_mm)

    tp = int(is_tp.sum())
    fp = n_pred - tp
    fn = n_ref - tp
    if n_ref == 0:
        f1 = dice = float("nan")
    elif n_pred == 0:
        f1 = dice = 0.0
    else:
        f1 = 2.0 * tp / (2.0 * tp + fn + fp)
        dice = _tp_dice(ref_fg[1], pred_fg[1], ref_labels[pred_fg[0]], linked, is_tp)
    # the clipped prediction is non-zero exactly on the predicted voxels, so its sum is theirs
    pred_values = prediction[pred_fg[0]].astype(np.float64)
    voxel_volume = float(np.prod(np.asarray(spacing, dtype=np.float64)))
    vol_diff = abs(float(pred_values.sum()) - float(ref_fg[1].size)) * voxel_volume
    pred_table, ref_table = _component_tables(
        pred_fg[1], ref_fg[1], pred_values, pred_centres, ref_centres, linked, distance, is_tp
    )
    return {
        "f1": f1,
        "dice": dice,
        "count_diff": abs(n_ref - n_pred),
        "vol_diff": vol_diff,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "n_ref": n_ref,
        "n_pred": n_pred,
        "pred_components": pred_table,
        "ref_components": ref_table,
    }
