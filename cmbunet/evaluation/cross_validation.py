"""Cross-validation: predict each fold's held-out cases, evaluate them, and summarise all folds together.

``validate_fold`` runs the full pipeline (screening -> discrimination -> segmentation) of one trained fold on
that fold's validation cases (``splits_final.json``), straight from the preprocessed data, and writes to
``fold_F/validation/``:

- ``CASE.nii.gz``: the binary prediction in the case's native geometry;
- ``CASE_probabilities.nii.gz``: the CMB probability map, native geometry;
- ``CASE_candidates.csv``: every screening candidate with its screening score, discrimination probability and
  whether it was kept, so thresholds can be studied later without running the networks again;
- ``metrics_per_case.csv`` and ``summary.json``: the official VALDO task-2 metrics against the raw labels;
- ``components.csv``: every reference and predicted CMB (centre in mm, size), the input of FROC and of the
  threshold search;
- ``validation_settings.json``: the inference settings used (the plans' defaults).

``cmbunet_evaluate_cv`` collects the folds into one table (``cv_table.csv``, ``cv_summary.json``) and draws the
FROC (``froc.csv``, ``froc.png``) in the model folder.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from cmbunet.dataset.raw_dataset import list_training_cases
from cmbunet.errors import CMBUNetError, InputError
from cmbunet.evaluation.evaluate import (CASE_COLUMNS, METRIC_COLUMNS, PER_CASE_CSV, SUMMARY_JSON,
                                         aggregate_metrics, write_evaluation)
from cmbunet.evaluation.froc import COMPONENTS_CSV, POS_COLUMNS, write_csv, write_froc
from cmbunet.evaluation.options import add_dist_option, require_positive_dist
from cmbunet.evaluation.valdo_metrics import DEFAULT_DIST_MM, case_metrics
from cmbunet.imageio import SimpleITKIO
from cmbunet.inference.outputs import CaseOutputs, write_case
from cmbunet.model_folder import VALIDATION_SETTINGS_FILE, ModelFolder, other_plans_hint
from cmbunet.paths import DEFAULT_PLANS_NAME, get_root, preprocessed_case_root, resolve_dataset_name
from cmbunet.plans.plans_io import preprocessing_hash
from cmbunet.preprocessing.preprocessor import export_to_native, load_preprocessed_case
from cmbunet.preprocessing.splits import SPLITS_FILE, get_fold_cases, load_splits
from cmbunet.utilities.cli import (add_dataset_option, add_device_option, add_folds_option, add_plans_option,
                                   command_parser, resolve_device_choice, run_cli)
from cmbunet.utilities.file_io import load_json, save_json

COMPONENT_COLUMNS = ["case", "kind", "label", "x_mm", "y_mm", "z_mm", "volume_vox"]
#: The columns of Table 3 of Chen & Dou (VALDO 2021), with the cases each mean runs over.
TABLE3_COLUMNS = {"dice_mean": "cases with CMBs", "vol_diff_mean": "all cases", "f1_mean": "cases with CMBs",
                  "count_diff_mean": "all cases"}
POOLED_COLUMNS = ["tp", "fp", "fn", "sensitivity", "precision", "f1_pooled", "fp_per_case"]
#: Counts: summed in the pooled row, left empty in the mean-of-folds row.
COUNT_COLUMNS = ("num_cases", "num_cases_with_cmb", "tp", "fp", "fn")
TABLE_COLUMNS = ["fold", "num_cases", "num_cases_with_cmb", *TABLE3_COLUMNS, *POOLED_COLUMNS]


# ------------------------------------------------------------------------------------------------ one fold
def case_outputs(validation_dir: Path, case: str) -> CaseOutputs:
    """The three files of a validated case; the binary map is written last and marks it finished."""
    return CaseOutputs(prediction=validation_dir / f"{case}.nii.gz", cmbs=None,
                       probabilities=validation_dir / f"{case}_probabilities.nii.gz",
                       candidates=validation_dir / f"{case}_candidates.csv")


def case_finished(validation_dir: Path, case: str) -> bool:
    return case_outputs(validation_dir, case).finished()


def candidate_table(candidates: pd.DataFrame, properties: Mapping[str, Any]) -> pd.DataFrame:
    """The predictor's candidates plus their position in the official metric's frame (native index x spacing)."""
    table = candidates.copy()
    native = table[["native_i", "native_j", "native_k"]].to_numpy(float) if len(table) else np.zeros((0, 3))
    table[POS_COLUMNS] = native * np.asarray(properties["original_spacing"], dtype=float)
    return table


def predict_validation_cases(model_dir: Path, fold: int | str, cases: Sequence[str], preprocessed_dir: Path,
                             validation_dir: Path, device: str = "cpu", overwrite: bool = False) -> list[str]:
    """Predict the unfinished ``cases`` with fold ``fold``'s networks; returns the cases predicted now."""
    # loads torch and the networks, which the rest of this module (and cmbunet_cross_validate --help) needs not
    from cmbunet.inference.options import InferenceOptions
    from cmbunet.inference.predictor import CMBPredictor, resolve_settings

    todo = [c for c in cases if overwrite or not case_finished(validation_dir, c)]
    if not todo:
        return []
    predictor = CMBPredictor.from_model_folder(model_dir, folds=[fold], options=InferenceOptions(device=device))
    # the plans' defaults only: a tuned inference_settings.json must not shape the data it was tuned on, and
    # the saved candidates stay comparable between runs. Screening keeps candidates down to the counting
    # threshold, so that the threshold search can sweep the screening threshold from there.
    predictor.settings = resolve_settings(predictor.plans, overrides={
        "screening_threshold": predictor.plans.candidate_count_threshold(device)})
    save_json(predictor.settings.to_dict(), validation_dir / VALIDATION_SETTINGS_FILE)
    for case in tqdm(todo, desc=f"validating fold {fold}", unit="case", disable=None):
        pre = load_preprocessed_case(preprocessed_dir, case)
        result = predictor.predict_preprocessed(pre.data, pre.properties)
        write_case(replace(result, candidates=candidate_table(result.candidates, pre.properties)),
                   case_outputs(validation_dir, case))
    return todo


def reference_files(dataset_name: str, cases: Sequence[str], raw_root: Path | None) -> dict[str, Path]:
    """The raw ``labelsTr`` file of each case; an empty dict when no raw dataset is reachable."""
    try:
        raw_dir = get_root("raw", raw_root) / dataset_name
    except CMBUNetError:
        return {}
    if not raw_dir.is_dir():
        return {}
    listed = list_training_cases(raw_dir)
    return {c: Path(listed[c]["label"]) for c in cases if c in listed}


def load_reference(case: str, label_file: Path | None, preprocessed_dir: Path) -> tuple[np.ndarray, list[float], str]:
    """(reference mask, spacing, source): the raw label, else the preprocessed label exported to native geometry
    (resampled twice, so only a fallback)."""
    if label_file is not None:
        ref, props = SimpleITKIO.read_seg(label_file)
        return ref, list(props["spacing"]), str(label_file)
    pre = load_preprocessed_case(preprocessed_dir, case)
    native = export_to_native(pre.seg.astype(np.float32), pre.properties) >= 0.5
    return native.astype(np.uint8), list(pre.properties["original_spacing"]), "preprocessed label exported to native"


def component_rows(case: str, metrics: dict[str, Any]) -> pd.DataFrame:
    """The case's reference and predicted components in one table (``kind`` = ref / pred)."""
    parts = [metrics["ref_components"].assign(kind="ref"), metrics["pred_components"].assign(kind="pred")]
    table = pd.concat([p[["label", "x_mm", "y_mm", "z_mm", "volume_vox", "kind"]] for p in parts], ignore_index=True)
    return table.assign(case=case)[COMPONENT_COLUMNS]


def evaluate_validation(validation_dir: Path, cases: Sequence[str], references: dict[str, Path],
                        preprocessed_dir: Path, dist_mm: float = DEFAULT_DIST_MM) -> dict[str, Any]:
    """Official metrics of every validation case -> ``metrics_per_case.csv``, ``summary.json``, ``components.csv``.

    A case without a prediction is scored as an empty prediction and flagged as missing.
    """
    rows, components = [], []
    for case in tqdm(cases, desc="evaluating", unit="case", disable=None):
        reference, spacing, source = load_reference(case, references.get(case), preprocessed_dir)
        pred_path = case_outputs(validation_dir, case).prediction
        missing = not pred_path.is_file()
        prediction = np.zeros(reference.shape, np.uint8) if missing else SimpleITKIO.read_seg(pred_path)[0]
        if prediction.shape != reference.shape:
            raise InputError(pred_path, f"shape {prediction.shape} differs from the reference {source} {reference.shape}")
        metrics = case_metrics(reference, prediction, tuple(spacing), dist_mm)
        rows.append({"case": case, **{k: metrics[k] for k in METRIC_COLUMNS}, "missing": missing,
                     "reference": source, "prediction": "" if missing else str(pred_path)})
        components.append(component_rows(case, metrics))
    per_case = pd.DataFrame(rows, columns=CASE_COLUMNS)
    aggregate = aggregate_metrics(per_case)
    write_evaluation(per_case, aggregate, validation_dir, dist_mm)
    table = pd.concat(components, ignore_index=True) if components else pd.DataFrame(columns=COMPONENT_COLUMNS)
    write_csv(table, validation_dir / COMPONENTS_CSV)
    return aggregate


def validation_cases(preprocessed_dir: Path, fold: int | str) -> list[str]:
    """The held-out cases of ``fold`` (none for fold ``all``)."""
    splits_path = preprocessed_dir / SPLITS_FILE
    if not splits_path.is_file():
        raise InputError(splits_path, "missing; run cmbunet_plan_and_preprocess first")
    return get_fold_cases(load_splits(splits_path), fold)[1]


def validate_fold(dataset_name: str, fold: int | str, preprocessed_root: Path | None = None,
                  results_root: Path | None = None, device: str = "cpu", raw_root: Path | None = None,
                  dist_mm: float = DEFAULT_DIST_MM, predict: bool = True, overwrite: bool = False,
                  plans_name: str = DEFAULT_PLANS_NAME) -> Path | None:
    """Predict and evaluate fold ``fold``'s validation cases into ``fold_F/validation``; returns that folder.

    Finished cases are skipped (``overwrite`` redoes them); the evaluation always runs again, so a changed
    ``dist_mm`` takes effect. With ``predict=False`` unfinished cases are not predicted and count as missing.
    Fold ``all`` has no validation cases: returns ``None``.
    """
    pre_root = get_root("preprocessed", preprocessed_root)
    name = resolve_dataset_name(dataset_name, pre_root)
    pre_dir = pre_root / name
    cases = validation_cases(pre_dir, fold)
    if not cases:
        return None
    model = ModelFolder.of_dataset(name, get_root("results", results_root), plans_name)
    case_root = pre_dir
    if plans_name != DEFAULT_PLANS_NAME:
        case_root = preprocessed_case_root(pre_dir, plans_name, preprocessing_hash(model.load_plans()))
    out = model.validation_dir(fold)
    out.mkdir(parents=True, exist_ok=True)
    if predict:
        predict_validation_cases(model.path, fold, cases, case_root, out, device, overwrite)
    evaluate_validation(out, cases, reference_files(name, cases, raw_root), case_root, dist_mm)
    return out


# ------------------------------------------------------------------------------------------------ all folds
def _nan(value: Any) -> float:
    """JSON null (NaN written by save_json) back to NaN."""
    return math.nan if value is None else float(value)


def load_fold_summary(summary_path: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """(aggregate, per-case table) of one fold's ``summary.json``."""
    try:
        summary = load_json(summary_path)
        aggregate = summary["aggregate"]
        per_case = pd.DataFrame.from_dict(summary.get("per_case", {}), orient="index")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(summary_path, f"is not a readable evaluation summary ({e})") from None
    per_case = per_case.rename_axis("case").reset_index()
    for column in METRIC_COLUMNS:
        if column in per_case:
            per_case[column] = per_case[column].map(_nan)
    return aggregate, per_case


def fold_row(fold: str, aggregate: dict[str, Any]) -> dict[str, Any]:
    """One line of the CV table from a fold's aggregates."""
    return {"fold": fold, **{k: _nan(aggregate.get(k)) for k in TABLE_COLUMNS if k != "fold"}}


def cv_table(fold_summaries: dict[str, tuple[dict[str, Any], pd.DataFrame]]) -> pd.DataFrame:
    """Per-fold rows, their ``mean`` (each fold weighs the same), and ``pooled`` (all cases of all folds
    together: Table 3 means over the pooled cases, detection counts summed)."""
    rows = [fold_row(fold, agg) for fold, (agg, _) in fold_summaries.items()]
    if not rows:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    numeric = table.columns.drop("fold")
    mean = {"fold": "mean", **{c: math.nan if c in COUNT_COLUMNS else float(table[c].astype(float).mean(skipna=True))
                               for c in numeric}}
    per_case = pd.concat([pc for _, pc in fold_summaries.values()], ignore_index=True)
    if "missing" not in per_case:
        per_case["missing"] = False
    pooled = fold_row("pooled", aggregate_metrics(per_case.fillna({"missing": False})))
    return pd.concat([table, pd.DataFrame([mean, pooled], columns=TABLE_COLUMNS)], ignore_index=True)


def format_table(table: pd.DataFrame) -> str:
    """The CV table for the console; undefined values print as n/a."""
    shown = table.copy()
    for column in shown.columns.drop("fold"):
        digits = 1 if column == "vol_diff_mean" else (0 if column in COUNT_COLUMNS else 3)
        blank = "" if column in COUNT_COLUMNS else "n/a"
        shown[column] = shown[column].map(lambda v: blank if pd.isna(v) else f"{float(v):.{digits}f}")
    return shown.to_string(index=False)


def fold_status(validation_dir: Path, cases: Sequence[str], dist_mm: float) -> str:
    """``ok`` when the summary exists at this distance and covers every case, else what is missing."""
    summary = validation_dir / SUMMARY_JSON
    if not summary.is_file():
        done = sum(case_finished(validation_dir, c) for c in cases)
        return f"not evaluated ({done} of {len(cases)} validation cases predicted)"
    content = load_json(summary)
    if not math.isclose(float(content.get("dist_mm", math.nan)), dist_mm):
        return f"evaluated at {content.get('dist_mm')} mm, not {dist_mm:g} mm"
    missing = content.get("missing_predictions", [])
    return "ok" if not missing else f"{len(missing)} of {len(cases)} validation cases not predicted"


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "cmbunet_evaluate_cv",
        "Summarise the cross-validation of a trained dataset: the official VALDO task-2 metrics of "
        "every fold's validation cases (Dice, volume difference, F1, count difference per fold and their mean), "
        "pooled sensitivity, precision and FP per case, and the FROC over the discrimination threshold.")
    add_dataset_option(p)
    add_plans_option(p)
    add_folds_option(p, "folds to summarise (default: every fold of splits_final.json)")
    add_dist_option(p, "linking distance in mm between predicted and reference CMB centres (default %(default)s)")
    p.add_argument("--predict-missing", action="store_true",
                   help="predict the validation cases of folds whose model is trained but not yet validated")
    add_device_option(p, "device for --predict-missing")
    p.add_argument("--results-root", type=Path, default=None, help="results root (default: $CMBUNET_RESULTS)")
    p.add_argument("--raw-root", type=Path, default=None,
                   help="raw data root holding the reference labels (default: $CMBUNET_RAW)")
    p.add_argument("--preprocessed-root", type=Path, default=None,
                   help="preprocessed data root (default: $CMBUNET_PREPROCESSED)")
    return p


def _all_folds(preprocessed_dir: Path) -> list[str]:
    return [str(i) for i in range(len(load_splits(preprocessed_dir / SPLITS_FILE)))]


def collect_folds(name: str, folds: Sequence[str], pre_dir: Path, results_root: Path, args: argparse.Namespace
                  ) -> tuple[dict[str, tuple[dict, pd.DataFrame]], dict[str, str]]:
    """Evaluate (and with ``--predict-missing`` predict) each fold as needed; returns usable summaries and
    every fold's status line."""
    model = ModelFolder.of_dataset(name, results_root, args.plans_name)
    complete = model.complete_folds()
    summaries, status = {}, {}
    for fold in folds:
        out = model.validation_dir(fold)
        cases = validation_cases(pre_dir, fold)
        state = fold_status(out, cases, args.dist)
        trained = fold in complete
        has_outputs = any(case_finished(out, c) for c in cases)
        if state != "ok" and ((args.predict_missing and trained) or has_outputs):
            validate_fold(name, fold, pre_dir.parent, results_root, resolve_device_choice(args.device)[0],
                          args.raw_root, args.dist,
                          predict=args.predict_missing and trained, plans_name=args.plans_name)
            state = fold_status(out, cases, args.dist)
        if state != "ok" and not trained:
            state += "; model not trained" if model.fold_dir(fold).is_dir() else "; no model folder"
        elif state != "ok" and not args.predict_missing:
            state += "; add --predict-missing to predict them"
        status[fold] = state
        if state == "ok":
            summaries[fold] = load_fold_summary(out / SUMMARY_JSON)
    return summaries, status


@run_cli
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    require_positive_dist(args.dist)
    pre_root = get_root("preprocessed", args.preprocessed_root)
    results_root = get_root("results", args.results_root)
    name = resolve_dataset_name(args.dataset, pre_root, results_root)
    pre_dir = pre_root / name
    folds = [str(f) for f in args.folds] if args.folds else _all_folds(pre_dir)
    summaries, status = collect_folds(name, folds, pre_dir, results_root, args)
    model = ModelFolder.of_dataset(name, results_root, args.plans_name)
    for fold, state in status.items():
        print(f"fold {fold}: {state}")
    if not summaries:
        if not model.path.is_dir():
            raise InputError(model.path, "model folder does not exist" + other_plans_hint(model.path))
        raise CMBUNetError(f"no fold of {name} has validation results; train the folds, then run "
                           f"cmbunet_evaluate_cv -d {args.dataset} --predict-missing")
    table = cv_table(summaries)
    write_csv(table, model.cv_table_file)
    froc_files = write_froc({f: model.validation_dir(f) for f in summaries}, model.path, args.dist)
    stages = pd.read_csv(froc_files["stages_csv"], dtype={"fold": str})
    save_json({"dataset": name, "dist_mm": args.dist, "folds": list(summaries), "fold_status": status,
               "table": table.to_dict(orient="records"), "columns_averaged_over": TABLE3_COLUMNS,
               "stage_points": stages[stages["fold"] == "pooled"].to_dict(orient="records")},
              model.cv_summary_file)
    print()
    print(format_table(table))
    print("\nmeans: Dice and F1 over cases with CMBs, volume and count differences over all cases; "
          "'pooled' counts all CMBs of all folds together")
    print("\n" + stages[stages["fold"] == "pooled"].drop(columns="fold").to_string(index=False, float_format="%.3f"))
    for path in (model.cv_table_file, model.cv_summary_file, *froc_files.values()):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
