"""FROC: detection sensitivity against false positives per case as the discrimination threshold moves.

The curve is computed from the candidate tables that :func:`cmbunet.evaluation.cross_validation.validate_fold`
saves (``CASE_candidates.csv``: every screening candidate with its screening score, discrimination probability
and whether it was kept) and the reference CMBs of ``components.csv``, so no network runs again.

Counting follows the official VALDO rule. Positions are voxel index x voxel spacing (mm; origin and direction
ignored). Each candidate is linked to its nearest reference CMB when that one is closer than ``dist_mm``. A
reference is detected at threshold ``t`` when at least one linked candidate scores ``>= t``; every other
candidate above ``t`` (unlinked, or a second hit on an already detected reference) is a false positive. The
linking does not depend on ``t``, so the whole curve comes from one distance matrix per case and two sorted
arrays: ``TP(t) = #references whose best linked score >= t`` and ``FP(t) = #candidates >= t - TP(t)``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from cmbunet.errors import InputError
from cmbunet.evaluation.evaluate import PER_CASE_CSV
from cmbunet.evaluation.valdo_metrics import DEFAULT_DIST_MM, link_components
from cmbunet.utilities.file_io import atomic_path

#: Candidate positions in the official metric's frame: native voxel index x native spacing (mm).
POS_COLUMNS = ["pos_x_mm", "pos_y_mm", "pos_z_mm"]
REF_POS_COLUMNS = ["x_mm", "y_mm", "z_mm"]
CANDIDATES_SUFFIX = "_candidates.csv"
COMPONENTS_CSV = "components.csv"
CURVE_COLUMNS = ["fold", "threshold", "sensitivity", "fp_per_case", "tp", "fp", "num_refs", "num_cases"]
STAGE_COLUMNS = ["fold", "stage", "sensitivity", "fp_per_case", "tp", "fp", "num_refs", "num_cases"]
#: Smallest FP/case drawn on the log axis; points with no false positive are drawn there.
PLOT_MIN_FP = 1e-2


# ------------------------------------------------------------------------------------------------ loading
def load_candidates(validation_dir: str | Path) -> pd.DataFrame:
    """Every ``CASE_candidates.csv`` of a validation folder in one table with a ``case`` column."""
    validation_dir = Path(validation_dir)
    frames = []
    for path in sorted(validation_dir.glob(f"*{CANDIDATES_SUFFIX}")):
        table = pd.read_csv(path)
        table.insert(0, "case", path.name[: -len(CANDIDATES_SUFFIX)])
        frames.append(table)
    if not frames:
        return pd.DataFrame(columns=["case", *POS_COLUMNS, "screening_score", "discrimination_score", "kept"])
    return pd.concat(frames, ignore_index=True)


def load_components(validation_dir: str | Path) -> pd.DataFrame:
    """``components.csv``: the reference (``kind == "ref"``) and predicted components of every evaluated case."""
    path = Path(validation_dir) / COMPONENTS_CSV
    if not path.is_file():
        raise InputError(path, "missing; run the validation (cmbunet_evaluate_cv --predict-missing) first")
    return pd.read_csv(path, dtype={"case": str}, keep_default_na=False, na_values=[""])


# ------------------------------------------------------------------------------------------------ counting
def link_to_references(candidates: pd.DataFrame, references: pd.DataFrame, dist_mm: float) -> np.ndarray:
    """Per candidate row, the row index (into ``references``) of its linked reference in the same case, or -1.

    One distance matrix per case; the nearest reference within ``dist_mm`` wins (the official linking).
    """
    linked = np.full(len(candidates), -1, dtype=np.int64)
    if len(candidates) == 0 or len(references) == 0:
        return linked
    cand_case = candidates["case"].astype(str).to_numpy()
    ref_case = references["case"].astype(str).to_numpy()
    cand_pos = candidates[POS_COLUMNS].to_numpy(float)
    ref_pos = references[REF_POS_COLUMNS].to_numpy(float)
    for case in np.intersect1d(cand_case, ref_case):
        ci, ri = np.flatnonzero(cand_case == case), np.flatnonzero(ref_case == case)
        link, _, _ = link_components(cand_pos[ci], ref_pos[ri], dist_mm)
        linked[ci] = np.where(link >= 0, ri[np.maximum(link, 0)], -1)
    return linked


def best_linked_score(scores: np.ndarray, linked: np.ndarray, num_refs: int) -> np.ndarray:
    """Per reference, the highest score among the candidates linked to it (-inf when none is): the threshold
    at or below which it counts as detected."""
    best = np.full(num_refs, -np.inf)
    hit = linked >= 0
    np.maximum.at(best, linked[hit], np.asarray(scores, dtype=float)[hit])
    return best


def counts_at(thresholds: np.ndarray, scores: np.ndarray, ref_best: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(TP, FP) at each threshold for candidates kept when ``score >= threshold``; vectorised by sorting."""
    thresholds = np.asarray(thresholds, dtype=float)
    sorted_scores = np.sort(np.asarray(scores, dtype=float))
    sorted_best = np.sort(ref_best)
    present = len(sorted_scores) - np.searchsorted(sorted_scores, thresholds, side="left")
    tp = len(sorted_best) - np.searchsorted(sorted_best, thresholds, side="left")
    return tp, present - tp


def _ratio(num: np.ndarray | float, den: float) -> np.ndarray | float:
    return np.asarray(num, dtype=float) / den if den else np.full(np.shape(num), math.nan)


def froc_curve(candidates: pd.DataFrame, references: pd.DataFrame, num_cases: int,
               dist_mm: float = DEFAULT_DIST_MM, score: str = "discrimination_score") -> pd.DataFrame:
    """Operating points at every distinct candidate score, from the strictest threshold to the loosest.

    ``references`` holds one row per reference CMB (``case``, ``x_mm``, ``y_mm``, ``z_mm``); ``num_cases``
    counts every case, also those without candidates or CMBs, because FP/case divides by it.
    """
    references = references.reset_index(drop=True)
    candidates = candidates.reset_index(drop=True)
    scores = candidates[score].to_numpy(float) if len(candidates) else np.zeros(0)
    linked = link_to_references(candidates, references, dist_mm)
    ref_best = best_linked_score(scores, linked, len(references))
    thresholds = np.unique(scores)[::-1]
    tp, fp = counts_at(thresholds, scores, ref_best)
    return pd.DataFrame({
        "threshold": thresholds, "sensitivity": _ratio(tp, len(references)), "fp_per_case": _ratio(fp, num_cases),
        "tp": tp, "fp": fp, "num_refs": len(references), "num_cases": num_cases,
    })


def subset_point(candidates: pd.DataFrame, references: pd.DataFrame, num_cases: int, mask: np.ndarray,
                 dist_mm: float = DEFAULT_DIST_MM) -> dict[str, float]:
    """Sensitivity and FP/case of the candidates selected by ``mask`` (e.g. all, or those kept)."""
    candidates, references = candidates.reset_index(drop=True), references.reset_index(drop=True)
    mask = np.asarray(mask, dtype=bool)
    linked = link_to_references(candidates, references, dist_mm)[mask]
    tp = int(np.unique(linked[linked >= 0]).size)
    fp = int(mask.sum()) - tp
    return {"sensitivity": float(_ratio(tp, len(references))), "fp_per_case": float(_ratio(fp, num_cases)),
            "tp": tp, "fp": fp, "num_refs": len(references), "num_cases": num_cases}


def stage_points(candidates: pd.DataFrame, references: pd.DataFrame, per_case: pd.DataFrame,
                 dist_mm: float = DEFAULT_DIST_MM) -> pd.DataFrame:
    """The three stages as operating points: all screening candidates, the kept candidates, and the official
    metric on the final masks (``per_case`` holds its ``tp``/``fp``/``fn`` per case)."""
    num_cases = len(per_case)
    kept = candidates["kept"].astype(str).str.lower().isin(["true", "1"]).to_numpy() if len(candidates) else np.zeros(0, bool)
    rows = [
        {"stage": "screening", **subset_point(candidates, references, num_cases, np.ones(len(candidates), bool), dist_mm)},
        {"stage": "discrimination", **subset_point(candidates, references, num_cases, kept, dist_mm)},
    ]
    tp, fp, fn = (int(per_case[k].sum()) for k in ("tp", "fp", "fn"))
    rows.append({"stage": "segmentation", "sensitivity": float(_ratio(tp, tp + fn)),
                 "fp_per_case": float(_ratio(fp, num_cases)), "tp": tp, "fp": fp, "num_refs": tp + fn,
                 "num_cases": num_cases})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ folds
def fold_inputs(validation_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(candidates, references, per-case metrics) of one fold's validation folder."""
    validation_dir = Path(validation_dir)
    per_case_path = validation_dir / PER_CASE_CSV
    if not per_case_path.is_file():
        raise InputError(per_case_path, "missing; the fold's validation has not been evaluated")
    per_case = pd.read_csv(per_case_path, dtype={"case": str}, keep_default_na=False, na_values=[""])
    components = load_components(validation_dir)
    references = components[components["kind"] == "ref"].reset_index(drop=True)
    candidates = load_candidates(validation_dir)
    candidates = candidates[candidates["case"].isin(per_case["case"])].reset_index(drop=True)
    return candidates, references, per_case


def froc_for_folds(validation_dirs: dict[str, Path], dist_mm: float = DEFAULT_DIST_MM) -> tuple[pd.DataFrame, pd.DataFrame]:
    """FROC curves and stage points per fold and ``pooled`` over all folds (cases are distinct across folds)."""
    curves, stages, pooled = [], [], []
    for fold, folder in validation_dirs.items():
        cand, ref, per_case = fold_inputs(folder)
        pooled.append((cand, ref, per_case))
        curves.append(froc_curve(cand, ref, len(per_case), dist_mm).assign(fold=str(fold)))
        stages.append(stage_points(cand, ref, per_case, dist_mm).assign(fold=str(fold)))
    if pooled:
        cand, ref, per_case = (pd.concat(parts, ignore_index=True) for parts in zip(*pooled))
        curves.append(froc_curve(cand, ref, len(per_case), dist_mm).assign(fold="pooled"))
        stages.append(stage_points(cand, ref, per_case, dist_mm).assign(fold="pooled"))
    curve = pd.concat(curves, ignore_index=True)[CURVE_COLUMNS] if curves else pd.DataFrame(columns=CURVE_COLUMNS)
    stage = pd.concat(stages, ignore_index=True)[STAGE_COLUMNS] if stages else pd.DataFrame(columns=STAGE_COLUMNS)
    return curve, stage


# ------------------------------------------------------------------------------------------------ output
def write_csv(table: pd.DataFrame, path: str | Path) -> Path:
    """A table written atomically."""
    with atomic_path(path, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.8g")
    return Path(path)


def _stepped(curve: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """FROC points with the FP axis floored for the log scale."""
    return np.maximum(curve["fp_per_case"].to_numpy(float), PLOT_MIN_FP), curve["sensitivity"].to_numpy(float)


def plot_froc(curves: pd.DataFrame, stages: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Per-fold curves (thin), the pooled curve (thick) and the pooled stage-wise operating points."""
    import matplotlib  # plotting only: the rest of the module, and every command's --help, goes without it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for fold, curve in curves.groupby("fold", sort=False):
        pooled = fold == "pooled"
        x, y = _stepped(curve)
        ax.step(x, y, where="post", lw=2.2 if pooled else 0.9, alpha=1.0 if pooled else 0.6,
                color="black" if pooled else None, label="pooled" if pooled else f"fold {fold}")
    markers = {"screening": ("s", "tab:orange"), "discrimination": ("o", "tab:green"), "segmentation": ("*", "tab:red")}
    for row in stages[stages["fold"] == "pooled"].itertuples():
        marker, color = markers.get(row.stage, ("x", "grey"))
        ax.plot(max(row.fp_per_case, PLOT_MIN_FP) if not math.isnan(row.fp_per_case) else np.nan, row.sensitivity,
                marker=marker, color=color, ms=12 if marker == "*" else 8, ls="none",
                label=f"after {row.stage}: sens {row.sensitivity:.2f}, FP/case {row.fp_per_case:.2f}")
    ax.set_xscale("log")
    ax.set_xlabel(f"false positives per case (log; 0 drawn at {PLOT_MIN_FP:g})")
    ax.set_ylabel("sensitivity")
    ax.set_ylim(0, 1.02)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title or "FROC over the discrimination threshold")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return Path(path)


def write_froc(validation_dirs: dict[str, Path], out_dir: str | Path, dist_mm: float = DEFAULT_DIST_MM) -> dict[str, Path]:
    """``froc.csv`` (curves), ``froc_stages.csv`` (stage points) and ``froc.png`` in ``out_dir``."""
    out_dir = Path(out_dir)
    curves, stages = froc_for_folds(validation_dirs, dist_mm)
    return {
        "froc_csv": write_csv(curves, out_dir / "froc.csv"),
        "stages_csv": write_csv(stages, out_dir / "froc_stages.csv"),
        "froc_png": plot_froc(curves, stages, out_dir / "froc.png", f"FROC, distance {dist_mm:g} mm"),
    }


def sensitivity_at(curve: pd.DataFrame, fp_levels: Iterable[float] = (0.5, 1, 2, 4, 8)) -> dict[float, float]:
    """Best sensitivity reachable with at most each FP/case level (the usual FROC summary)."""
    out = {}
    for level in fp_levels:
        ok = curve[curve["fp_per_case"] <= level]
        out[float(level)] = float(ok["sensitivity"].max()) if len(ok) else 0.0
    return out


__all__: Sequence[str] = [
    "froc_curve", "subset_point", "stage_points", "froc_for_folds", "write_froc", "plot_froc", "sensitivity_at",
    "load_candidates", "load_components", "link_to_references", "counts_at", "best_linked_score",
]
