"""Evaluate a folder of predictions against a folder of references with the official VALDO task-2 metrics.

References come as a VALDO tree (``sub-XXX/sub-XXX_space-T2S_CMB.nii.gz``, subject folders optional), as a
BIDS derivative of masks (``sub-XXX/[ses-YYY/]anat/sub-XXX[_ses-YYY]_desc-LABEL_mask.nii.gz``, the case being the
entities without ``desc``), as a ``labelsTr``-style folder (``CASE.nii.gz``) or as a raw dataset folder holding
``labelsTr/``. Predictions are found in every layout ``cmbunet_predict`` writes (flat, per case, BIDS
derivatives with sessions; :mod:`cmbunet.inference.layouts`); probability maps and tables are not predictions. A reference without a prediction is scored as an empty prediction and listed as missing, so a
crashed case cannot silently improve the averages.
"""

from __future__ import annotations

import math
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
from tqdm import tqdm

from cmbunet.errors import InputError
from cmbunet.evaluation.valdo_metrics import DEFAULT_DIST_MM, case_metrics
from cmbunet.imageio import SimpleITKIO
from cmbunet.imageio.reader_writer import ImageProperties, geometry_mismatch
from cmbunet.inference.layouts import VALDO_PREDICTION_SUFFIX, bids_mask_case, find_predictions
from cmbunet.utilities.case_names import SUBJECT_PATTERN, image_stem
from cmbunet.utilities.file_io import atomic_path, remove_stale_temp_files, save_json

VALDO_REFERENCE_RE = re.compile(rf"^({SUBJECT_PATTERN})_space-T2S_CMB\.nii(?:\.gz)?$")  # BIDS entities kept

#: Per-case columns, in the order of the CSV and of the printed table.
METRIC_COLUMNS = ["f1", "dice", "count_diff", "vol_diff", "tp", "fp", "fn", "n_ref", "n_pred"]
CASE_COLUMNS = ["case", *METRIC_COLUMNS, "missing", "reference", "prediction"]

PER_CASE_CSV = "metrics_per_case.csv"
SUMMARY_JSON = "summary.json"


def find_reference_cases(ref_dir: str | Path) -> dict[str, Path]:
    """Map case id -> reference file for a VALDO tree, a BIDS derivative of masks, a labelsTr-style folder or a
    raw dataset folder."""
    ref_dir = Path(ref_dir)
    if not ref_dir.is_dir():
        raise InputError(ref_dir, "reference folder does not exist" if not ref_dir.exists() else "reference must be a folder")
    if (ref_dir / "labelsTr").is_dir():
        ref_dir = ref_dir / "labelsTr"
    valdo = sorted(list(ref_dir.glob("sub-*_space-T2S_CMB.nii*")) + list(ref_dir.glob("sub-*/**/sub-*_space-T2S_CMB.nii*")))
    found: dict[str, Path] = {}
    for path in valdo:
        m = VALDO_REFERENCE_RE.match(path.name)
        if m and path.is_file():
            if m.group(1) in found:
                raise InputError(path, f"second reference for {m.group(1)} (first: {found[m.group(1)]})")
            found[m.group(1)] = path
    if found:
        return found
    for path in sorted(ref_dir.glob("sub-*/**/sub-*_mask.nii*")):  # a BIDS derivative of reference masks
        case = bids_mask_case(path, desc_of_prediction=False)
        if case is not None and path.is_file():
            if case in found:
                raise InputError(path, f"second reference for {case} (first: {found[case]})")
            found[case] = path
    if found:
        return found
    for path in sorted(ref_dir.iterdir()):
        case = image_stem(path.name)
        if path.is_file() and case and not path.name.startswith("."):
            if case in found:
                raise InputError(path, f"second reference for case {case} (first: {found[case]})")
            found[case] = path
    if not found:
        raise InputError(ref_dir, "no reference label files found; expected sub-XXX/sub-XXX_space-T2S_CMB.nii.gz "
                                  "(VALDO), sub-XXX/[ses-YYY/]anat/sub-XXX[_ses-YYY]_desc-LABEL_mask.nii.gz (BIDS "
                                  "derivative), CASE.nii.gz (labelsTr style) or a dataset folder with labelsTr/")
    return found


def find_prediction(pred_dir: Path, case: str) -> Path | None:
    """The prediction file of ``case`` in any layout ``cmbunet_predict`` writes, ``None`` if absent."""
    found = find_predictions(pred_dir).get(case)
    return None if found is None else found.mask


def pair_cases(ref_dir: str | Path, pred_dir: str | Path) -> list[tuple[str, Path, Path | None]]:
    """(case, reference, prediction or None) for every reference case, sorted by case id."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise InputError(pred_dir, "prediction folder does not exist" if not pred_dir.exists() else "prediction must be a folder")
    refs = find_reference_cases(ref_dir)
    predictions = find_predictions(pred_dir)
    pairs = [(case, refs[case], predictions[case].mask if case in predictions else None) for case in sorted(refs)]
    if all(pred is None for _, _, pred in pairs):
        example = next(iter(sorted(refs)))
        seen = f" (found predictions of {', '.join(sorted(predictions)[:3])})" if predictions else ""
        raise InputError(pred_dir, f"no prediction matches any of the {len(refs)} reference cases{seen}; expected "
                                   f"e.g. {example}.nii.gz, {example}{VALDO_PREDICTION_SUFFIX}.nii.gz or, as a BIDS "
                                   f"derivative, {example}_desc-cmb_mask.nii.gz in sub-XXX/[ses-YYY/]anat/")
    return pairs


def resample_to_reference(pred_path: Path, ref_props: ImageProperties) -> np.ndarray:
    """The prediction resampled (nearest neighbour, in world coordinates) onto the reference grid; voxels of the
    reference grid outside the prediction's extent are 0."""
    reference = SimpleITKIO.to_sitk(np.zeros(ref_props["shape"], dtype=np.uint8), ref_props)
    moved = sitk.Resample(sitk.ReadImage(str(pred_path)), reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0)
    return sitk.GetArrayFromImage(moved).transpose(2, 1, 0)


def evaluate_case(case: str, ref_path: Path, pred_path: Path | None, dist_mm: float = DEFAULT_DIST_MM,
                  resample: bool = False) -> dict[str, Any]:
    """One row of the per-case table; a missing prediction is scored as an empty one.

    The voxel arrays are compared only when both files share one grid (shape, spacing, origin and direction):
    a prediction of another orientation or origin would otherwise be scored voxel by voxel against the wrong
    anatomy. Such a prediction is refused, or with ``resample`` resampled onto the reference grid.
    """
    reference, props = SimpleITKIO.read_seg(ref_path)
    resampled = False
    if pred_path is None:
        prediction = np.zeros(reference.shape, dtype=np.float32)
    else:
        prediction, pred_props = SimpleITKIO.read_seg(pred_path)
        problem = geometry_mismatch(props, pred_props)
        if problem and not resample:
            raise InputError(pred_path, f"geometry differs from the reference {ref_path}: {problem}; write the "
                                        "prediction on the reference grid, or pass --resample to resample it "
                                        "onto that grid (nearest neighbour)")
        if problem:
            prediction, resampled = resample_to_reference(pred_path, props), True
    metrics = case_metrics(reference, prediction, tuple(props["spacing"]), dist_mm)
    row: dict[str, Any] = {"case": case, **{k: metrics[k] for k in METRIC_COLUMNS}}
    row.update(missing=pred_path is None, reference=str(ref_path), prediction="" if pred_path is None else str(pred_path),
               resampled=resampled)
    return row


def _evaluate_case_job(args: tuple) -> tuple[dict | None, tuple[str | None, str] | None]:
    """Worker wrapper: return the error as data, because InputError does not survive pickling."""
    try:
        return evaluate_case(*args), None
    except InputError as e:
        return None, (e.path, e.problem)


def _median_mean(values: pd.Series) -> tuple[float, float]:
    """Median and mean ignoring NaN; NaN when there is nothing to average."""
    values = values.dropna().astype(float)
    if values.empty:
        return math.nan, math.nan
    return float(values.median()), float(values.mean())


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def aggregate_metrics(per_case: pd.DataFrame) -> dict[str, Any]:
    """Pooled detection rates and per-case medians/means.

    F1 and Dice are averaged over cases with CMBs only (elsewhere they are undefined); the count and volume
    differences over all cases. The challenge ranked medians, Chen & Dou (VALDO 2021) reported means: both are given.
    """
    tp, fp, fn = (int(per_case[k].sum()) for k in ("tp", "fp", "fn"))
    n = len(per_case)
    positive = per_case[per_case["n_ref"] > 0]
    agg: dict[str, Any] = {
        "num_cases": n,
        "num_cases_with_cmb": int(len(positive)),
        "num_missing_predictions": int(per_case["missing"].sum()),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "sensitivity": _ratio(tp, tp + fn),
        "precision": _ratio(tp, tp + fp),
        "f1_pooled": _ratio(2 * tp, 2 * tp + fp + fn),
        "fp_per_case": _ratio(fp, n),
    }
    for key, rows in (("f1", positive), ("dice", positive), ("count_diff", per_case), ("vol_diff", per_case)):
        agg[f"{key}_median"], agg[f"{key}_mean"] = _median_mean(rows[key])
    return agg


def evaluate_folders(
    ref_dir: str | Path, pred_dir: str | Path, dist_mm: float = DEFAULT_DIST_MM, num_processes: int = 1,
    resample: bool = False,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Score every reference case; returns the per-case table (one row per case) and the aggregates.

    With ``resample``, predictions on another grid than their reference are resampled onto it (else refused);
    the aggregates then list them under ``resampled_predictions``."""
    if dist_mm <= 0:
        raise InputError(None, f"the linking distance must be positive, got {dist_mm}")
    if num_processes < 1:
        raise InputError(None, f"the number of processes must be at least 1, got {num_processes}")
    jobs = [(case, ref, pred, float(dist_mm), resample) for case, ref, pred in pair_cases(ref_dir, pred_dir)]
    workers = min(num_processes, len(jobs))
    bar = dict(total=len(jobs), desc="evaluating", unit="case", disable=None)
    if workers == 1:
        results = [_evaluate_case_job(job) for job in tqdm(jobs, **bar)]
    else:
        with ProcessPoolExecutor(workers) as pool:
            results = list(tqdm(pool.map(_evaluate_case_job, jobs), **bar))
    for _, error in results:
        if error is not None:
            raise InputError(*error)
    per_case = pd.DataFrame([row for row, _ in results], columns=CASE_COLUMNS)
    aggregate = aggregate_metrics(per_case)
    resampled = [row["case"] for row, _ in results if row.get("resampled")]
    if resampled:
        aggregate["resampled_predictions"] = resampled
    return per_case, aggregate


def summary_dict(per_case: pd.DataFrame, aggregate: dict[str, Any], dist_mm: float) -> dict[str, Any]:
    """The structure of ``summary.json`` (NaN becomes null when written)."""
    cases = {
        row["case"]: {k: row[k] for k in METRIC_COLUMNS} | {"missing": bool(row["missing"])}
        for row in per_case.to_dict(orient="records")
    }
    return {
        "per_case": cases,
        "aggregate": aggregate,
        "dist_mm": float(dist_mm),
        "missing_predictions": per_case.loc[per_case["missing"], "case"].tolist(),
    }


def write_evaluation(
    per_case: pd.DataFrame, aggregate: dict[str, Any], out_dir: str | Path, dist_mm: float = DEFAULT_DIST_MM
) -> dict[str, Path]:
    """Write ``metrics_per_case.csv`` and ``summary.json`` atomically into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    remove_stale_temp_files(out_dir)  # left by a killed run
    csv_path, json_path = out_dir / PER_CASE_CSV, out_dir / SUMMARY_JSON
    with atomic_path(csv_path, suffix=".csv") as tmp:
        per_case.to_csv(tmp, index=False, float_format="%.6g")
    save_json(summary_dict(per_case, aggregate, dist_mm), json_path)
    return {"per_case_csv": csv_path, "summary_json": json_path}
