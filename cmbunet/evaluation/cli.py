"""``cmbunet_evaluate``: score predictions with the official VALDO task-2 metrics and print a readable report."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import pandas as pd

from cmbunet.evaluation.evaluate import evaluate_folders, write_evaluation
from cmbunet.evaluation.options import add_dist_option
from cmbunet.utilities.cli import command_parser, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "cmbunet_evaluate",
        "Compare predicted CMB maps with reference labels using the official VALDO 2021 task-2 "
        "metrics (F1, Dice, count and volume difference) and write metrics_per_case.csv and summary.json.")
    p.add_argument("-ref", "--reference", dest="ref", required=True, type=Path,
                   help="reference labels: a VALDO tree (sub-XXX/sub-XXX_space-T2S_CMB.nii.gz), a BIDS derivative "
                        "(sub-XXX/[ses-YYY/]anat/sub-XXX[_ses-YYY]_desc-LABEL_mask.nii.gz), a labelsTr-style "
                        "folder (CASE.nii.gz) or a dataset folder containing labelsTr/")
    p.add_argument("-pred", "--predictions", dest="pred", required=True, type=Path,
                   help="predictions, in any layout cmbunet_predict writes: CASE.nii.gz or "
                        "sub-XXX_space-T2S_prediction.nii.gz (flat or in a folder per case), or a BIDS derivative "
                        "(sub-XXX/[ses-YYY/]anat/..._desc-cmb_mask.nii.gz)")
    add_dist_option(p, "a predicted CMB counts as found when its centre is closer than this many mm to the "
                       "centre of a reference CMB (default: %(default)s, as in the VALDO challenge report)")
    p.add_argument("-o", "--output", dest="out_dir", type=Path, default=None,
                   help="output folder (default: PRED/evaluation)")
    p.add_argument("--resample", action="store_true",
                   help="resample a prediction whose grid (shape, spacing, origin, direction) differs from its "
                        "reference onto the reference grid (nearest neighbour); without it such a prediction is refused")
    p.add_argument("-np", "--num-processes", dest="num_processes", type=int, default=1,
                   help="number of processes reading and scoring cases in parallel (default: %(default)s)")
    return p


def _fmt(value: Any, digits: int = 3) -> str:
    """Numbers for the console: NaN shows as 'n/a' (undefined, e.g. F1 of a case without CMBs)."""
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def format_per_case(per_case: pd.DataFrame) -> str:
    """Per-case table; missing predictions are flagged in the last column."""
    table = per_case[["case", "n_ref", "n_pred", "tp", "fp", "fn", "f1", "dice", "count_diff", "vol_diff"]].copy()
    table["vol_diff"] = table["vol_diff"].map(lambda v: _fmt(float(v), 2))
    for col in ("f1", "dice"):
        table[col] = table[col].map(lambda v: _fmt(float(v)))
    table["note"] = per_case["missing"].map(lambda m: "NO PREDICTION" if m else "")
    return table.to_string(index=False)


def format_aggregate(agg: dict[str, Any], dist_mm: float) -> str:
    """Aggregates in three blocks: pooled detection, medians (challenge ranking) and means (as Chen & Dou's
    VALDO 2021 report gives them)."""
    lines = [
        f"cases: {agg['num_cases']} ({agg['num_cases_with_cmb']} with CMBs), missing predictions: "
        f"{agg['num_missing_predictions']}, distance threshold: {dist_mm:g} mm",
        f"pooled over all CMBs: TP {agg['tp']}  FP {agg['fp']}  FN {agg['fn']}  "
        f"sensitivity {_fmt(agg['sensitivity'])}  precision {_fmt(agg['precision'])}  "
        f"F1 {_fmt(agg['f1_pooled'])}  FP/case {_fmt(agg['fp_per_case'], 2)}",
    ]
    rows = []
    for key, label, over in (("f1", "F1", "cases with CMBs"), ("dice", "Dice", "cases with CMBs"),
                             ("count_diff", "count diff", "all cases"), ("vol_diff", "vol diff (mm3)", "all cases")):
        digits = 2 if key == "vol_diff" else 3
        rows.append({"metric": label, "median": _fmt(agg[f"{key}_median"], digits),
                     "mean": _fmt(agg[f"{key}_mean"], digits), "over": over})
    lines.append(pd.DataFrame(rows).to_string(index=False))
    return "\n".join(lines)


@run_cli
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out_dir = args.out_dir if args.out_dir is not None else args.pred / "evaluation"
    per_case, agg = evaluate_folders(args.ref, args.pred, dist_mm=args.dist, num_processes=args.num_processes,
                                     resample=args.resample)
    written = write_evaluation(per_case, agg, out_dir, dist_mm=args.dist)
    print(format_per_case(per_case))
    print()
    print(format_aggregate(agg, args.dist))
    if agg["num_missing_predictions"]:
        missing = ", ".join(per_case.loc[per_case["missing"], "case"])
        print(f"\nwarning: no prediction for {missing}; scored as empty predictions")
    if agg.get("resampled_predictions"):
        print(f"\nnote: resampled onto the reference grid: {', '.join(agg['resampled_predictions'])}")
    print(f"\nwrote {written['per_case_csv']}\nwrote {written['summary_json']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
