"""Detections against reference labels, for the report: which detection is a true or false positive and
which reference CMB was missed.

The matching is not re-implemented here: :func:`cmbunet.evaluation.valdo_metrics.case_metrics` (the
official VALDO rule that ``cmbunet_evaluate`` applies) decides, on the arrays as ``cmbunet_evaluate`` reads
them, so the report's TP/FP/FN/F1 are ``cmbunet_evaluate``'s numbers. This module only carries its
per-component tables over to the report's CMB tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from cmbunet.evaluation.evaluate import METRIC_COLUMNS, aggregate_metrics, find_reference_cases
from cmbunet.evaluation.valdo_metrics import DEFAULT_DIST_MM, binarise_reference, case_metrics
from cmbunet.imageio.reader_writer import ImageProperties, SimpleITKIO
from cmbunet.utilities.components import centre_table

__all__ = ["DEFAULT_DIST_MM", "Comparison", "compare", "find_reference_cases", "label_detections",
           "missed_table", "report_aggregate"]

#: Columns that describe where a CMB is; taken from the mask's components, not from the CMB table.
_POSITION_COLUMNS = {"id", "i", "j", "k", "x_mm", "y_mm", "z_mm", "volume_mm3"}


@dataclass
class Comparison:
    """One case scored against its reference: ``metrics`` is ``cmbunet_evaluate``'s per-case row
    (f1, dice, count_diff, vol_diff, tp, fp, fn, n_ref, n_pred), ``reference`` the binary reference mask and
    the two tables those of :func:`case_metrics` (centres in mm = voxel index x spacing)."""

    metrics: dict[str, Any]
    reference: np.ndarray
    pred_components: pd.DataFrame
    ref_components: pd.DataFrame
    spacing: np.ndarray


def compare(reference: np.ndarray, prediction: np.ndarray, ref_geometry: ImageProperties,
            dist_mm: float = DEFAULT_DIST_MM) -> Comparison:
    """Score ``prediction`` (as stored, on the reference grid) against ``reference`` as ``cmbunet_evaluate`` does."""
    spacing = tuple(ref_geometry["spacing"])
    m = case_metrics(reference, prediction, spacing, dist_mm)
    return Comparison({k: m[k] for k in METRIC_COLUMNS}, binarise_reference(reference), m["pred_components"],
                      m["ref_components"], np.asarray(spacing, dtype=float))


def _centres_vox(components: pd.DataFrame, spacing: np.ndarray) -> np.ndarray:
    return components[["x_mm", "y_mm", "z_mm"]].to_numpy(float).reshape(-1, 3) / spacing


def _match_rows(table_vox: np.ndarray, comp_vox: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """For each component, the index of the table row whose centre voxel is its rounded centre (-1: none).

    A table row written for a component has the component's centre of mass rounded to a voxel, so it lies
    within half a voxel per axis; pairs are taken nearest first, one row per component."""
    src = np.full(len(comp_vox), -1)
    if not len(table_vox) or not len(comp_vox):
        return src
    dist = np.linalg.norm((table_vox[:, None, :] - comp_vox[None, :, :]) * spacing, axis=-1)
    tolerance = 0.5 * float(np.linalg.norm(spacing)) + 1e-6
    used = np.zeros(len(table_vox), dtype=bool)
    for flat in np.argsort(dist, axis=None, kind="stable"):
        r, c = np.unravel_index(flat, dist.shape)
        if dist[r, c] > tolerance:
            break
        if src[c] < 0 and not used[r]:
            src[c], used[r] = r, True
    return src


def label_detections(table: pd.DataFrame, comparison: Comparison,
                     geometry: ImageProperties) -> tuple[pd.DataFrame, list[str]]:
    """The detections as the metrics counted them: one row per predicted component with its ``outcome``
    (``TP``/``FP``) and ``reference_distance_mm``; the id and scores come from the CMB table row at the same
    centre. Notes say where the CMB table and the mask disagree."""
    comps = comparison.pred_components
    comp_vox = _centres_vox(comps, comparison.spacing)
    out = centre_table(comps["label"].to_numpy(), comp_vox, comps["volume_vox"].to_numpy(), geometry)
    table = table.reset_index(drop=True)
    table_vox = table[["i", "j", "k"]].to_numpy(float).reshape(-1, 3) if len(table) else np.zeros((0, 3))
    src = _match_rows(table_vox, comp_vox, comparison.spacing)
    if len(table):
        ids = table["id"].reindex(src).to_numpy(object)
        out["id"] = np.where(src >= 0, ids, out["id"].to_numpy(object))
        for col in table.columns:
            if col not in _POSITION_COLUMNS:
                out[col] = table[col].reindex(src).to_numpy()
    out["outcome"] = np.where(comps["is_tp"].to_numpy(bool), "TP", "FP")
    out["reference_distance_mm"] = comps["distance_mm"].to_numpy(float)
    notes = []
    unmatched_rows = len(table) - int((src >= 0).sum())
    if unmatched_rows:
        notes.append(f"{unmatched_rows} row(s) of the CMB table match no CMB of the prediction mask; the sheets "
                     "show the mask's CMBs, as the metrics count them")
    if len(table) and (src < 0).any():
        notes.append(f"{int((src < 0).sum())} CMB(s) of the prediction mask are not in the CMB table: shown with "
                     "their component number and no scores")
    return out, notes


def missed_table(comparison: Comparison, geometry: ImageProperties) -> pd.DataFrame:
    """The reference CMBs no detection matched (false negatives): reference component number as ``id``,
    centre, volume and the distance to the nearest detection (inf when there is none)."""
    refs = comparison.ref_components
    missed = refs.loc[~refs["detected"].to_numpy(bool)]
    table = centre_table(missed["label"].to_numpy(), _centres_vox(missed, comparison.spacing),
                         missed["volume_vox"].to_numpy(), geometry)
    pred_mm = comparison.pred_components[["x_mm", "y_mm", "z_mm"]].to_numpy(float).reshape(-1, 3)
    ref_mm = missed[["x_mm", "y_mm", "z_mm"]].to_numpy(float).reshape(-1, 3)
    if len(pred_mm):
        table["nearest_detection_mm"] = np.linalg.norm(ref_mm[:, None] - pred_mm[None], axis=-1).min(axis=1)
    else:
        table["nearest_detection_mm"] = np.inf
    return table


def report_aggregate(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``cmbunet_evaluate``'s aggregates of the per-case rows (case -> metrics plus ``missing``)."""
    per_case = pd.DataFrame([{"case": case, **row} for case, row in rows.items()])
    return aggregate_metrics(per_case)


def read_reference(path: Path) -> tuple[np.ndarray, ImageProperties]:
    """A reference label map as ``cmbunet_evaluate`` reads it (stored values; binarised by the metrics)."""
    return SimpleITKIO.read_seg(path)
