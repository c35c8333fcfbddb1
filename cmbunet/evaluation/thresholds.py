"""Choose the operating point (screening and discrimination thresholds, minimum CMB size) on the
cross-validation predictions, and save it next to the model in ``inference_settings.json``.

The search runs on the saved candidate tables, not on new network outputs. For a pair of thresholds
``(ts, td)`` a candidate is a detection when ``screening score >= ts`` and ``discrimination probability > td``
(the predictor's own comparisons). The final CMBs are then approximated by the detections after merging those
closer than ``merge_mm`` (greedy, highest discrimination probability first), because the U-Net's segmentations
of two such candidates usually fuse into one component. Detections are scored with the official rule (nearest
reference within ``dist_mm``; one true positive per reference), pooled over every validation case of every
fold, and the pair with the highest pooled F1 wins.

The merge is greedy in descending probability, so whether a candidate survives depends only on higher-scored
candidates; for one ``ts`` a single pass therefore serves every ``td`` at once, and F1 over the whole ``td``
grid comes from two sorted arrays (as in the FROC).

The minimum CMB size is chosen afterwards on the saved validation masks: predicted components smaller than
``min_component_voxels`` (native voxels) are dropped and the official F1 is recomputed. It is exact for the
thresholds the validation ran with and an approximation for other thresholds.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from cmbunet.errors import CMBUNetError, InputError
from cmbunet.evaluation.evaluate import PER_CASE_CSV
from cmbunet.evaluation.froc import POS_COLUMNS, REF_POS_COLUMNS, fold_inputs, link_to_references, load_components
from cmbunet.evaluation.options import add_dist_option, require_positive_dist
from cmbunet.evaluation.valdo_metrics import DEFAULT_DIST_MM, link_components
from cmbunet.inference.shape import decision_scores
from cmbunet.model_folder import VALIDATION_SETTINGS_FILE, ModelFolder, other_plans_hint
from cmbunet.paths import get_root, resolve_dataset_name
from cmbunet.plans.schema import SETTING_KEYS, InferenceSettings, Plans
from cmbunet.utilities.cli import add_dataset_option, add_folds_option, add_plans_option, command_parser, run_cli
from cmbunet.utilities.file_io import load_json, save_json

DEFAULT_TD_GRID = np.round(np.arange(0.05, 0.951, 0.025), 4)
DEFAULT_SIZES = (0, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20)
SWEEP_COLUMNS = ["screening_threshold", "discrimination_threshold", "tp", "fp", "fn", "f1", "sensitivity",
                 "precision", "fp_per_case"]


# ------------------------------------------------------------------------------------------------ merging
def greedy_merge(positions: np.ndarray, scores: np.ndarray, merge_mm: float) -> np.ndarray:
    """Keep-mask of greedy suppression: in descending score order (ties: first row first), a candidate is
    dropped when a kept one lies closer than ``merge_mm``."""
    n = len(scores)
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    pos = np.asarray(positions, dtype=float)[order]
    close = np.linalg.norm(pos[:, None] - pos[None], axis=-1) < merge_mm
    suppressed = np.zeros(n, dtype=bool)
    for i in range(n):
        if not suppressed[i]:
            keep[order[i]] = True
            suppressed |= close[i]
    return keep


def merged_detections(candidates: pd.DataFrame, ts: float, merge_mm: float) -> pd.DataFrame:
    """Candidates with ``screening_score >= ts`` that survive the per-case greedy merge (valid for every td)."""
    above = candidates[candidates["screening_score"].to_numpy(float) >= ts]
    if merge_mm <= 0 or len(above) == 0:
        return above
    keep = np.zeros(len(above), dtype=bool)
    cases = above["case"].astype(str).to_numpy()
    pos, score = above[POS_COLUMNS].to_numpy(float), above["discrimination_score"].to_numpy(float)
    for case in np.unique(cases):
        rows = np.flatnonzero(cases == case)
        keep[rows] = greedy_merge(pos[rows], score[rows], merge_mm)
    return above[keep]


# ------------------------------------------------------------------------------------------------ counting
def _link(detections: pd.DataFrame, references: pd.DataFrame, dist_mm: float) -> np.ndarray:
    """Row index into ``references`` of each detection's linked reference (same case, nearest within dist), -1 if none."""
    return link_to_references(detections.reset_index(drop=True), references, dist_mm)


def f1_over_td(detections: pd.DataFrame, references: pd.DataFrame, num_cases: int, td_grid: Sequence[float],
               dist_mm: float) -> pd.DataFrame:
    """Pooled TP/FP/FN and F1 of the detections with ``discrimination_score > td`` for every ``td``."""
    td = np.asarray(td_grid, dtype=float)
    score = detections["discrimination_score"].to_numpy(float)
    linked = _link(detections, references, dist_mm)
    best = np.full(len(references), -np.inf)
    hit = linked >= 0
    np.maximum.at(best, linked[hit], score[hit])
    present = len(score) - np.searchsorted(np.sort(score), td, side="right")
    tp = len(best) - np.searchsorted(np.sort(best), td, side="right")
    fp, fn = present - tp, len(references) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
        sens = np.where(len(references) > 0, tp / max(len(references), 1), np.nan)
        prec = np.where(present > 0, tp / np.maximum(present, 1), np.nan)
    return pd.DataFrame({"discrimination_threshold": td, "tp": tp, "fp": fp, "fn": fn, "f1": f1,
                         "sensitivity": sens, "precision": prec, "fp_per_case": fp / max(num_cases, 1)})


def threshold_sweep(candidates: pd.DataFrame, references: pd.DataFrame, num_cases: int,
                    ts_grid: Sequence[float], td_grid: Sequence[float], dist_mm: float = DEFAULT_DIST_MM,
                    merge_mm: float = 0.0) -> pd.DataFrame:
    """Pooled F1 at every ``(ts, td)`` of the two grids."""
    references = references.reset_index(drop=True)
    parts = [f1_over_td(merged_detections(candidates, float(ts), merge_mm), references, num_cases, td_grid, dist_mm)
             .assign(screening_threshold=float(ts)) for ts in ts_grid]
    return pd.concat(parts, ignore_index=True)[SWEEP_COLUMNS]


def best_point(sweep: pd.DataFrame, default: tuple[float, float]) -> pd.Series:
    """Highest F1; among equals the point nearest the defaults (so a flat optimum keeps familiar values)."""
    valid = sweep.dropna(subset=["f1"])
    if valid.empty:
        raise CMBUNetError("F1 is undefined at every threshold (no reference CMB and no candidate)")
    dist = np.hypot(valid["screening_threshold"] - default[0], valid["discrimination_threshold"] - default[1])
    order = np.lexsort((dist.to_numpy(), -valid["f1"].to_numpy()))
    return valid.iloc[order[0]]


def value_at(sweep: pd.DataFrame, ts: float, td: float) -> pd.Series:
    """The sweep row at (ts, td) (both grids contain the defaults)."""
    hit = sweep[np.isclose(sweep["screening_threshold"], ts) & np.isclose(sweep["discrimination_threshold"], td)]
    return hit.iloc[0]


# ------------------------------------------------------------------------------------------------ minimum size
def min_size_sweep(components: pd.DataFrame, sizes: Sequence[int], dist_mm: float = DEFAULT_DIST_MM) -> pd.DataFrame:
    """Pooled official F1 of the saved masks after dropping predicted components below each size (voxels)."""
    refs = components[components["kind"] == "ref"]
    preds = components[components["kind"] == "pred"]
    rows = []
    for size in sizes:
        kept = preds[preds["volume_vox"].to_numpy() >= size]
        tp = 0
        for case, ref in refs.groupby("case"):
            pred = kept[kept["case"] == case]
            _, _, is_tp = link_components(pred[REF_POS_COLUMNS].to_numpy(float), ref[REF_POS_COLUMNS].to_numpy(float), dist_mm)
            tp += int(is_tp.sum())
        fp, fn = len(kept) - tp, len(refs) - tp
        f1 = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else math.nan
        rows.append({"min_component_voxels": int(size), "tp": tp, "fp": fp, "fn": fn, "f1": f1})
    return pd.DataFrame(rows)


def choose_min_size(table: pd.DataFrame, min_gain: float = 0.0) -> int:
    """Smallest size with the best F1; 0 unless it beats no filtering by more than ``min_gain``."""
    valid = table.dropna(subset=["f1"])
    if valid.empty:
        return 0
    base = valid.loc[valid["min_component_voxels"] == valid["min_component_voxels"].min(), "f1"].iloc[0]
    best = valid.sort_values(["f1", "min_component_voxels"], ascending=[False, True]).iloc[0]
    return int(best["min_component_voxels"]) if best["f1"] > base + min_gain else 0


# ------------------------------------------------------------------------------------------------ model folder
def default_merge_mm(plans: Plans) -> float:
    """Half the smallest NMS box side in mm: two screening peaks are at least that far apart, so closer
    candidates only arise when discrimination moved them together."""
    nms = np.asarray(plans.inference.nms_size_vox, dtype=float)
    spacing = np.asarray(plans.target_spacing, dtype=float)
    return float(np.min(nms / 2 * spacing))


def save_settings(model_dir: Path, chosen: dict[str, Any]) -> Path:
    """Merge the chosen values into ``inference_settings.json`` atomically (other keys are kept)."""
    path = ModelFolder(model_dir).inference_settings_file
    current: dict[str, Any] = {}
    if path.is_file():
        try:
            current = load_json(path)
        except ValueError as e:
            raise InputError(path, f"is not valid JSON ({e}); fix or delete it") from None
        if not isinstance(current, dict):
            raise InputError(path, "must contain a JSON object")
    save_json({**current, **chosen}, path)
    return path


def with_shape_rule(candidates: pd.DataFrame, settings: InferenceSettings) -> pd.DataFrame:
    """The candidate table with the predictor's shape rule folded into ``discrimination_score``
    (:func:`~cmbunet.inference.shape.decision_scores`): a dropped spot scores below every threshold, a round one
    above its round threshold scores above every threshold. Spots were measured only where the validation could
    keep a candidate (NaN below, where the rule changes nothing), so thresholds below the validation's are
    approximate; tables written before the spot columns existed are returned as they are, and those written
    before ``round_spot_elongation`` existed are scored with an unscaled elongation limit, and those without
    ``csf_share``, ``blob_ratio`` or ``inplane_elongation`` without the location, curvature or in-plane rule."""
    if "spot_elongation" not in candidates or "spot_diameter_mm" not in candidates:
        return candidates
    scale = (candidates["round_spot_elongation"].to_numpy(float) if "round_spot_elongation" in candidates
             else 1.0)
    score = decision_scores(candidates["discrimination_score"].to_numpy(float),
                            candidates["spot_elongation"].to_numpy(float),
                            candidates["spot_diameter_mm"].to_numpy(float), settings, scale,
                            *(candidates[c].to_numpy(float) if c in candidates else None
                              for c in ("csf_share", "blob_ratio", "inplane_elongation")))
    return candidates.assign(discrimination_score=score)


#: Highest screening threshold the search tries. Chosen on a few validation subjects of the training sites, a
#: screening threshold near 1 drops the microbleeds that screen less clearly on other scanners: on three sites no
#: model saw (documentation/experiments.md, 6g) searching up to 0.95 picked 0.85-0.95 and gave pooled F1 0.851,
#: sensitivity 0.872; capped at 0.5 it gave 0.865, 0.915 (the candidate prior's 0.1: 0.864, 0.909) with about 4
#: times fewer candidates than at 0.1.
MAX_SEARCHED_SCREENING_THRESHOLD = 0.5


def screening_grid(validation_threshold: float, highest: float = MAX_SEARCHED_SCREENING_THRESHOLD) -> np.ndarray:
    """Screening thresholds to try: from the validation's own (candidates below it were never saved) up to
    ``highest``; just the validation's when it is already higher."""
    top = max(float(validation_threshold), float(highest))
    return np.unique(np.round(np.r_[validation_threshold, np.linspace(validation_threshold, top, 18)], 4))


def find_thresholds(model_dir: Path, validation_dirs: dict[str, Path], dist_mm: float = DEFAULT_DIST_MM,
                    merge_mm: float | None = None, td_grid: Sequence[float] | None = None,
                    ts_grid: Sequence[float] | None = None, sizes: Sequence[int] = DEFAULT_SIZES,
                    max_screening_threshold: float = MAX_SEARCHED_SCREENING_THRESHOLD) -> dict[str, Any]:
    """Sweep the thresholds and the minimum size on the validation outputs of ``validation_dirs``; returns the
    chosen settings, the F1 at the defaults and the sweep tables (nothing is written). Without ``ts_grid`` the
    screening threshold is searched up to ``max_screening_threshold``."""
    plans = ModelFolder(model_dir).load_plans()
    inference = plans.inference
    used = {}
    for folder in validation_dirs.values():
        settings_path = Path(folder) / VALIDATION_SETTINGS_FILE
        used = load_json(settings_path) if settings_path.is_file() else used
    # the validation screened down to its own threshold (the sweep starts there); the default point is the
    # plans' screening threshold where that is higher
    lowest = float(used.get("screening_threshold", inference.screening_threshold))
    default = (max(lowest, float(inference.screening_threshold)),
               float(used.get("discrimination_threshold", inference.discrimination_threshold)))
    merge_mm = default_merge_mm(plans) if merge_mm is None else float(merge_mm)
    parts = [fold_inputs(folder) for folder in validation_dirs.values()]
    candidates, references, per_case = (pd.concat(p, ignore_index=True) for p in zip(*parts))
    candidates = with_shape_rule(candidates, inference.merged({k: v for k, v in used.items() if k in SETTING_KEYS}))
    components = pd.concat([load_components(f) for f in validation_dirs.values()], ignore_index=True)
    components = components[components["case"].isin(per_case["case"])]
    searched = screening_grid(lowest, max_screening_threshold) if ts_grid is None else np.asarray(ts_grid, float)
    td_grid = np.unique(np.r_[DEFAULT_TD_GRID if td_grid is None else td_grid, default[1]])
    sweep = threshold_sweep(candidates, references, len(per_case), np.unique(np.r_[searched, default[0]]),
                            td_grid, dist_mm, merge_mm)
    in_search = np.isclose(sweep["screening_threshold"].to_numpy()[:, None], searched[None, :]).any(axis=1)
    best, at_default = best_point(sweep[in_search], default), value_at(sweep, *default)
    sizes_table = min_size_sweep(components, sizes, dist_mm)
    min_size = choose_min_size(sizes_table)
    folds = ", ".join(validation_dirs)
    chosen = {
        "screening_threshold": float(best["screening_threshold"]),
        "discrimination_threshold": float(best["discrimination_threshold"]),
        "min_component_voxels": min_size,
        "selected_by": f"maximum pooled F1 over {len(per_case)} validation cases of folds {folds}: candidate sweep, "
                       f"detections merged within {merge_mm:.2f} mm, linking distance {dist_mm:g} mm",
        "cv_f1": float(best["f1"]),
    }
    return {"settings": chosen, "default": default, "f1_default": float(at_default["f1"]), "best": best,
            "sweep": sweep, "sizes": sizes_table, "merge_mm": merge_mm,
            "segmentation_f1": float(sizes_table.loc[sizes_table["min_component_voxels"] == min(sizes), "f1"].iloc[0])
            if len(sizes_table) else math.nan}


#: Bounds of the prior-corrected discrimination threshold: never below the paper's 0.5; at most 0.98, because a
#: ratio read off a few validation cases is noisy beyond it. Over three held-out sites, pooled F1 was 0.735 at
#: the earlier bound 0.95 and 0.753 at 0.98 (documentation/experiments.md, 6c).
PRIOR_THRESHOLD_RANGE = (0.5, 0.98)


def _hand_set(path: Path) -> bool:
    """True when ``inference_settings.json`` holds values a user wrote (no ``selected_by``)."""
    if not path.is_file():
        return False
    try:
        current = load_json(path)
    except ValueError:
        return False
    return isinstance(current, dict) and bool(current) and "selected_by" not in current


def candidate_prior_threshold(model_dir: Path, folds: Sequence[str]) -> tuple[float, float] | None:
    """Discrimination threshold corrected for the share of CMBs among screening candidates: ``(threshold, r)``.

    Why: discrimination trains on CMBs and screening false positives 1:1, so its probability is calibrated for
    even odds. Among the candidates it judges at inference, false positives outnumber CMBs by ``r`` (read from
    the final screening model's whole-volume validation, ``fold_F/screening/validation_candidates.json``); Bayes'
    rule then keeps a candidate when its probability exceeds ``r / (1 + r)``, not 0.5. Measured on a held-out
    site, this raised F1 from 0.48 to 0.71 (documentation/experiments.md, 6a). ``None`` when no fold has the file.
    """
    fps = hits = 0
    model = ModelFolder(model_dir)
    for fold in folds:
        path = model.validation_candidates_file(fold)
        if not path.is_file():
            continue
        cases = load_json(path).get("cases", [])
        fps += sum(int(c["false_positives"]) for c in cases)
        hits += sum(int(c["detected"]) for c in cases)
    if hits == 0:
        return None
    r = fps / hits
    lo, hi = PRIOR_THRESHOLD_RANGE
    return float(np.clip(r / (1.0 + r), lo, hi)), float(r)


def threshold_from_candidate_prior(model_dir: Path, folds: Sequence[str]) -> float | None:
    """Write the prior-corrected discrimination threshold to ``inference_settings.json`` unless the file holds
    hand-set values or thresholds chosen on cross-validation (those are better informed); returns it."""
    path = ModelFolder(model_dir).inference_settings_file
    if _hand_set(path):
        return None
    try:
        current = load_json(path) if path.is_file() else {}
    except ValueError:
        current = {}
    if isinstance(current, dict) and str(current.get("selected_by", "")).startswith("maximum pooled F1"):
        return None
    found = candidate_prior_threshold(model_dir, folds)
    if found is None:
        return None
    td, r = found
    save_settings(model_dir, {"discrimination_threshold": td,
                              "selected_by": f"candidate prior: {r:.1f} screening false positives per CMB found in "
                                             f"the validation volumes of folds {', '.join(map(str, folds))}, so "
                                             f"threshold r/(1+r) within {list(PRIOR_THRESHOLD_RANGE)}"})
    print(f"discrimination threshold {td:.3f}: screening finds {r:.1f} false positives per CMB, and discrimination "
          f"was trained on even odds -> {path}")
    return td


def thresholds_after_cross_validation(model_dir: Path, num_folds: int, dist_mm: float = DEFAULT_DIST_MM
                                      ) -> dict[str, Any] | None:
    """Once every fold ``0..num_folds-1`` has evaluated validation predictions, choose the thresholds on all of
    them pooled and save them, unless ``inference_settings.json`` holds values a user set by hand.

    Why: the default thresholds are set once for every cohort; the operating point that maximises F1 depends on
    the data, and cross-validation predictions are the only unbiased place to read it. Returns the result of
    :func:`find_thresholds` when it ran, else ``None``.
    """
    model = ModelFolder(model_dir)
    dirs = {str(f): model.validation_dir(f) for f in range(int(num_folds))}
    if num_folds < 2 or not all((d / PER_CASE_CSV).is_file() for d in dirs.values()):
        return None
    path = model.inference_settings_file
    if _hand_set(path):
        print(f"{path} holds hand-set values: thresholds are not chosen automatically (run cmbunet_find_thresholds "
              "to replace them)")
        return None
    result = find_thresholds(model_dir, dirs, dist_mm)
    save_settings(model_dir, result["settings"])
    s = result["settings"]
    print(f"all {num_folds} folds validated: thresholds chosen on their pooled predictions -> {path}\n"
          f"  screening >= {s['screening_threshold']:g}, discrimination > {s['discrimination_threshold']:g}, "
          f"minimum size {s['min_component_voxels']} voxels: candidate F1 {result['f1_default']:.3f} at the defaults, "
          f"{s['cv_f1']:.3f} chosen")
    return result


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "cmbunet_find_thresholds",
        "Pick the screening and discrimination thresholds (and a minimum CMB size) that maximise the "
        "pooled F1 of the cross-validation predictions, and save them in the model folder's "
        "inference_settings.json, which cmbunet_predict then uses by default.")
    add_dataset_option(p)
    add_plans_option(p)
    add_folds_option(p, "folds whose validation results to use (default: every fold with fold_F/validation)")
    add_dist_option(p, "linking distance in mm, as in cmbunet_evaluate (default %(default)s)")
    p.add_argument("--merge-mm", type=float, default=None,
                   help="detections closer than this merge into one CMB (default: half the smallest NMS box side)")
    p.add_argument("--no-min-size", action="store_true", help="do not search a minimum CMB size (keep 0)")
    p.add_argument("--max-screening-threshold", type=float, default=MAX_SEARCHED_SCREENING_THRESHOLD, metavar="T",
                   help="highest screening threshold to try (default %(default)s: higher ones, chosen on the training "
                        "sites, lost microbleeds on scanners the model never saw; 0.95 searches as before)")
    p.add_argument("--dry-run", action="store_true", help="print the choice without writing inference_settings.json")
    p.add_argument("--results-root", type=Path, default=None, help="results root (default: $CMBUNET_RESULTS)")
    return p


def _validation_dirs(model_dir: Path, folds: Sequence[str] | None) -> dict[str, Path]:
    """``fold_F/validation`` folders that have been evaluated."""
    model = ModelFolder(model_dir)
    if not model.path.is_dir():
        raise InputError(model.path, "model folder does not exist" + other_plans_hint(model.path))
    found = model.evaluated_folds(PER_CASE_CSV) if folds is None else [str(f) for f in folds]
    dirs = {f: model.validation_dir(f) for f in found}
    missing = [str(d) for d in dirs.values() if not (d / PER_CASE_CSV).is_file()]
    if missing or not dirs:
        raise CMBUNetError("no evaluated cross-validation predictions in " + (", ".join(missing) or str(model_dir))
                           + "; run cmbunet_evaluate_cv -d DATASET --predict-missing first")
    return dirs


@run_cli
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    require_positive_dist(args.dist)
    results_root = get_root("results", args.results_root)
    name = resolve_dataset_name(args.dataset, results_root)
    model_dir = ModelFolder.of_dataset(name, results_root, args.plans_name).path
    dirs = _validation_dirs(model_dir, args.folds)
    if not 0.0 < args.max_screening_threshold < 1.0:
        raise CMBUNetError(f"--max-screening-threshold must lie between 0 and 1, got {args.max_screening_threshold}")
    result = find_thresholds(model_dir, dirs, args.dist, args.merge_mm, sizes=(0,) if args.no_min_size else DEFAULT_SIZES,
                             max_screening_threshold=args.max_screening_threshold)
    s, best = result["settings"], result["best"]
    ts0, td0 = result["default"]
    print(f"validation cases of folds {', '.join(dirs)}; detections merged within {result['merge_mm']:.2f} mm")
    print(f"default   screening >= {ts0:g}, discrimination > {td0:g}: candidate F1 {result['f1_default']:.3f}")
    print(f"chosen    screening >= {s['screening_threshold']:g}, discrimination > {s['discrimination_threshold']:g}: "
          f"candidate F1 {s['cv_f1']:.3f} (TP {int(best['tp'])}, FP {int(best['fp'])}, FN {int(best['fn'])})")
    print(f"minimum CMB size: {s['min_component_voxels']} voxels (F1 of the saved masks without it: "
          f"{result['segmentation_f1']:.3f})")
    if args.dry_run:
        print("dry run: nothing written")
        return 0
    print(f"wrote {save_settings(model_dir, s)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
