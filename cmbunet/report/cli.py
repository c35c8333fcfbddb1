"""``cmbunet_report``: a visual quality-control report of a prediction folder.

Every case gets one or more PNG sheets (overview mosaic plus close-ups of each detected CMB, see
:mod:`cmbunet.report.sheets`) and a line on ``index.html`` (:mod:`cmbunet.report.html`). With reference
labels (``-ref``) every detection is marked as true or false positive and every missed reference CMB gets
its own close-ups, by the official VALDO matching rule (:mod:`cmbunet.report.reference`). Problems with one
case (unreadable mask, missing image, broken table) are written on the page next to that case instead of
stopping the report, so the report is most useful exactly when something went wrong.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from cmbunet.errors import CMBUNetError, InputError
from cmbunet.evaluation.options import add_dist_option
from cmbunet.imageio import SimpleITKIO, geometry_mismatch
from cmbunet.inference.bids import read_cmb_tsv
from cmbunet.inference.input_cases import find_input_cases
from cmbunet.inference.layouts import PredictionFiles, find_predictions
from cmbunet.report.html import CaseEntry, write_index
from cmbunet.report.reference import (DEFAULT_DIST_MM, compare, find_reference_cases, label_detections,
                                      missed_table, read_reference, report_aggregate)
from cmbunet.report.sheets import render_missed_sheets, render_sheets, render_thumbnail
from cmbunet.report.volumes import CaseVolumes, normalise_cmb_table
from cmbunet.utilities.cli import command_parser, run_cli
from cmbunet.utilities.components import empty_centre_table
from cmbunet.utilities.file_io import atomic_path, load_json

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp")
DEFAULT_MAX_CMBS_PER_SHEET = 8


# ------------------------------------------------------------------------------------------------ discovery
def find_prediction_files(pred_dir: Path) -> dict[str, PredictionFiles]:
    """Case id -> binary prediction and CMB table, in every layout ``cmbunet_predict`` writes (flat, per case,
    BIDS derivatives; :mod:`cmbunet.inference.layouts`); probability maps and hidden temporary files are not
    predictions."""
    return find_predictions(pred_dir)


def read_summaries(pred_dir: Path) -> dict[str, dict[str, Any]]:
    """Case -> its last line in ``summary.csv`` (or the per-part ``summary_part*.csv`` files); empty if none.
    Lines of input entries that are no case (``ignored``: metadata, files the model does not read) are left out."""
    rows: dict[str, dict[str, Any]] = {}
    for path in sorted(pred_dir.glob("summary*.csv")):
        try:
            table = pd.read_csv(path, dtype={"case": str}, keep_default_na=False, na_values=[""])  # case "nan" stays
        except (OSError, ValueError, pd.errors.EmptyDataError):
            continue
        if "case" in table.columns:
            rows.update({str(r["case"]): r for r in table.to_dict(orient="records") if r.get("status") != "ignored"})
    return rows


def find_case_images(image_input: Path) -> dict[str, Any]:
    """Case id -> input case (VALDO tree, ``CASE_0000`` folder or one file); only the T2* channel is used."""
    return {c.case: c for c in find_input_cases(image_input, {"0": "T2S"})}


def expand_images(paths: Iterable[str | Path]) -> list[Path]:
    """Image files named by the user: files as given, folders searched recursively (e.g. a model folder for
    all its ``progress.png``). Anything unusable is an :class:`InputError` before anything is written."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InputError(path, f"folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        elif not path.is_file():
            raise InputError(path, "extra image does not exist")
        elif path.suffix.lower() not in IMAGE_SUFFIXES:
            raise InputError(path, f"not an image a browser can show; expected one of {', '.join(IMAGE_SUFFIXES)}")
        else:
            out.append(path)
    return list(dict.fromkeys(p.resolve() for p in out))


def unique_names(paths: Sequence[Path]) -> list[str]:
    """Short distinct file names: colliding names get one more parent folder until they differ, so that the
    many ``progress.png`` of a model folder become ``fold_0_screening_progress.png`` and so on."""
    parts = [[q for q in p.parts if q not in (p.anchor, "")] or [p.name] for p in paths]
    depth = [1] * len(paths)
    while True:
        names = ["_".join(x[-d:]) for x, d in zip(parts, depth)]
        clashes = {n for n in names if names.count(n) > 1}
        grow = [i for i, n in enumerate(names) if n in clashes and depth[i] < len(parts[i])]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    if len(set(names)) < len(names):
        return [f"{n}_{name}" for n, name in enumerate(names)]
    return names


def copy_images(paths: Sequence[Path], dest: Path, report_dir: Path) -> list[str]:
    """Copy images into ``dest`` atomically; returns their paths relative to the report folder."""
    rel = []
    for path, name in zip(paths, unique_names(paths)):
        with atomic_path(dest / name, suffix=path.suffix) as tmp:
            shutil.copyfile(path, tmp)
        rel.append((dest / name).relative_to(report_dir).as_posix())
    return rel


def load_evaluation(pred_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """Aggregates of ``PRED_DIR/evaluation/summary.json`` when present, with a note when it is unreadable."""
    path = pred_dir / "evaluation" / "summary.json"
    if not path.is_file():
        return None, None
    try:
        aggregate = load_json(path).get("aggregate")
    except (OSError, ValueError, AttributeError) as e:
        return None, f"{path} could not be read: {e}"
    if not isinstance(aggregate, dict):
        return None, f"{path} has no 'aggregate' section"
    return aggregate, None


# ------------------------------------------------------------------------------------------------ one case
def _read_table(path: Path, problems: list[str]) -> pd.DataFrame | None:
    """The CMB CSV, or ``None`` (centres then come from the mask) with a note when it is unreadable."""
    if not path.is_file():
        problems.append(f"{path.name} not found: CMBs were taken from the mask (no scores)")
        return None
    try:
        return read_cmb_tsv(path) if path.suffix == ".tsv" else pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (OSError, ValueError) as e:
        problems.append(f"{path.name} could not be read ({e}): CMBs were taken from the mask")
        return None


def _read_t2s(image_case: Any, geometry: dict, problems: list[str]) -> np.ndarray | None:
    """The T2* channel on the prediction's grid, or ``None`` with the reason added to ``problems``."""
    if image_case.error:
        problems.append(f"image not shown: {image_case.error}")
        return None
    try:
        image, props = SimpleITKIO.read_images(image_case.images[:1])
    except InputError as e:
        problems.append(f"image not shown: {e}")
        return None
    mismatch = geometry_mismatch(geometry, props)
    if mismatch:
        problems.append(f"image not shown: {image_case.images[0]} does not match the prediction's geometry ({mismatch})")
        return None
    return image[0]


def _reference_comparison(ref_path: Path, prediction: np.ndarray | None, geometry: dict | None, dist_mm: float,
                          problems: list[str]) -> tuple[Any, np.ndarray, dict] | None:
    """Score the prediction (``None``: no prediction, scored as an empty one, as ``cmbunet_evaluate`` does)
    against its reference; returns (comparison, prediction, geometry) or ``None`` with the reason in
    ``problems`` when the two cannot be compared."""
    try:
        reference, ref_geometry = read_reference(ref_path)
    except InputError as e:
        problems.append(f"reference could not be read, detections not scored: {e}")
        return None
    if prediction is None:
        prediction, geometry = np.zeros(reference.shape, dtype=np.float32), ref_geometry
    mismatch = geometry_mismatch(ref_geometry, geometry)
    if mismatch:
        problems.append(f"detections not scored: the reference {ref_path.name} is on another grid than the "
                        f"prediction ({mismatch}); cmbunet_evaluate refuses it too unless run with --resample")
        return None
    return compare(reference, prediction, ref_geometry, dist_mm), prediction, geometry


def load_case(case: str, mask_path: Path | None, csv_path: Path, image_case: Any | None, problems: list[str],
              ref_path: Path | None = None, dist_mm: float = DEFAULT_DIST_MM) -> tuple[CaseVolumes, dict | None]:
    """Mask, CMB table, T2* image and, with ``ref_path``, the comparison with the reference of one case;
    returns the volumes and ``cmbunet_evaluate``'s metrics (``None`` when not compared).

    Raises :class:`InputError` only when the mask is unusable. Without a mask (``mask_path`` None) the case
    is drawn on the reference grid with an empty prediction, every reference CMB a miss."""
    prediction, geometry = SimpleITKIO.read_seg(mask_path) if mask_path is not None else (None, None)
    comparison = None
    if ref_path is not None:
        compared = _reference_comparison(ref_path, prediction, geometry, dist_mm, problems)
        if compared is not None:
            comparison, prediction, geometry = compared
    if prediction is None:
        raise InputError(None, "nothing to draw without a prediction or a readable reference")
    mask = np.asarray(prediction) >= 0.5
    raw_table = _read_table(csv_path, problems) if mask_path is not None else empty_centre_table()
    table, notes = normalise_cmb_table(raw_table, mask, geometry)
    problems.extend(notes)
    metrics, reference, missed = None, None, None
    if comparison is not None:
        table, notes = label_detections(table, comparison, geometry)
        problems.extend(notes)
        reference, missed = comparison.reference, missed_table(comparison, geometry)
        metrics = dict(comparison.metrics, missing=mask_path is None)
    image = _read_t2s(image_case, geometry, problems) if image_case is not None else None
    return CaseVolumes(case, mask, geometry, image, table, reference=reference, missed=missed), metrics


def _summary_fields(row: dict[str, Any] | None) -> dict[str, Any]:
    if not row:
        return {"status": "not in summary.csv"}
    error = row.get("error")
    seconds = row.get("seconds_total")
    return {"status": str(row.get("status", "")), "error": "" if pd.isna(error) else str(error),
            "seconds": None if seconds is None or pd.isna(seconds) else float(seconds)}


@dataclass(frozen=True)
class ReportOptions:
    """What every case of one report shares: the prediction folder, the images (None: masks alone) and reference
    folders given, the report folder, CMB rows per sheet, axial slices of the overview and the linking distance of
    the reference comparison."""

    pred_dir: Path
    report_dir: Path
    image_input: Path | None = None
    ref_dir: Path | None = None
    max_per_sheet: int = DEFAULT_MAX_CMBS_PER_SHEET
    num_slices: int = 16
    dist_mm: float = DEFAULT_DIST_MM


def report_case(case: str, prediction: PredictionFiles | None, image_case: Any | None,
                summary: dict[str, Any] | None, ref_path: Path | None, report: ReportOptions) -> CaseEntry:
    """Render one case and describe it for the index; any problem ends up in ``entry.problems``."""
    entry = CaseEntry(case, **_summary_fields(summary))
    mask_path = None if prediction is None else prediction.mask
    table_path = prediction.table if prediction is not None and prediction.table is not None else \
        report.pred_dir / f"{case}_cmbs.csv"
    if report.image_input is not None and image_case is None:
        entry.problems.append(f"no T2* image for this case in {report.image_input}: the sheet shows the mask only")
    if report.ref_dir is not None and ref_path is None:
        entry.problems.append(f"no reference for this case in {report.ref_dir}: detections not scored")
    if mask_path is None:
        if ref_path is None:
            entry.problems.append("no prediction file for this case")
            if summary and not pd.isna(summary.get("num_cmbs", np.nan)):
                entry.num_cmbs = int(summary["num_cmbs"])
            return entry
        entry.problems.append("no prediction file for this case: scored as an empty prediction, as cmbunet_evaluate "
                              "does (every reference CMB missed)")
    try:
        vol, entry.metrics = load_case(case, mask_path, table_path, image_case, entry.problems,
                                       ref_path, report.dist_mm)
    except InputError as e:
        entry.problems.append(f"prediction could not be read: {e}")
        return entry
    entry.num_cmbs = len(vol.cmbs)
    volumes = pd.to_numeric(vol.cmbs["volume_mm3"], errors="coerce") if "volume_mm3" in vol.cmbs else None
    entry.total_volume_mm3 = float(volumes.sum()) if volumes is not None and volumes.notna().any() else (0.0 if not len(vol.cmbs) else None)
    report_dir = report.report_dir
    cases_dir = report_dir / "cases"

    def rel(paths: Iterable[Path]) -> list[str]:
        return [p.relative_to(report_dir).as_posix() for p in paths]

    entry.sheets = rel(render_sheets(vol, cases_dir, report.max_per_sheet, report.num_slices))
    entry.missed_sheets = rel(render_missed_sheets(vol, cases_dir, report.max_per_sheet))
    entry.thumbnail = render_thumbnail(vol, cases_dir / f"{case}_thumb.png").relative_to(report_dir).as_posix()
    return entry


# ------------------------------------------------------------------------------------------------ report
def write_report(pred_dir: str | Path, image_input: str | Path | None, report_dir: str | Path,
                 max_cmbs_per_sheet: int = DEFAULT_MAX_CMBS_PER_SHEET, extra_images: Sequence[str | Path] = (),
                 num_slices: int = 16, reference: str | Path | None = None, dist_mm: float = DEFAULT_DIST_MM) -> Path:
    """Write the QC report of ``pred_dir`` into ``report_dir`` and return the path of its ``index.html``.

    ``image_input`` (a VALDO tree, a ``CASE_0000`` folder or one file) supplies the T2* background; without
    it the masks are drawn alone. ``reference`` (what ``cmbunet_evaluate -ref`` takes) adds the reference
    outlines, marks every detection as true or false positive and every missed reference CMB, with the
    official VALDO rule at ``dist_mm``, and lists the cases worst first. ``extra_images`` (files or folders,
    e.g. a model folder's ``progress.png``) are copied into ``report_dir/extras``; ``pred_dir/evaluation``
    (summary.json, FROC plot) is picked up."""
    pred_dir, report_dir = Path(pred_dir), Path(report_dir)
    if not pred_dir.is_dir():
        raise InputError(pred_dir, "prediction folder does not exist" if not pred_dir.exists() else "prediction must be a folder")
    if max_cmbs_per_sheet < 1:
        raise InputError(None, f"--max-cmbs-per-sheet must be at least 1, got {max_cmbs_per_sheet}")
    if dist_mm <= 0:
        raise InputError(None, f"the linking distance --dist must be positive, got {dist_mm}")
    image_path = None if image_input is None else Path(image_input)
    ref_dir = None if reference is None else Path(reference)
    references = find_reference_cases(ref_dir) if ref_dir is not None else {}
    images = find_case_images(image_path) if image_path is not None else {}
    extras = expand_images(extra_images)
    predictions, summaries = find_prediction_files(pred_dir), read_summaries(pred_dir)
    if not (set(predictions) | set(summaries) | set(images)):
        raise InputError(pred_dir, "no predictions found; expected CASE.nii.gz or sub-XXX_space-T2S_prediction.nii.gz "
                                   "files, or a BIDS derivative (sub-XXX/[ses-YYY/]anat/..._desc-cmb_mask.nii.gz)")
    cases = sorted(set(predictions) | set(summaries) | set(images) | set(references))
    report = ReportOptions(pred_dir, report_dir, image_path, ref_dir, max_cmbs_per_sheet, num_slices, dist_mm)
    entries = [report_case(case, predictions.get(case), images.get(case), summaries.get(case), references.get(case),
                           report) for case in tqdm(cases, desc="report", unit="case", disable=None)]
    aggregate, note = load_evaluation(pred_dir)
    if ref_dir is not None:
        aggregate, note = _reference_aggregate(entries, references, ref_dir, dist_mm)
    eval_pngs = sorted((pred_dir / "evaluation").rglob("*.png")) if (pred_dir / "evaluation").is_dir() else []
    sources = {"predictions": str(pred_dir.resolve())}
    sources["images"] = str(image_path.resolve()) if image_path is not None else "none given (masks shown alone)"
    if ref_dir is not None:
        sources["reference"] = f"{ref_dir.resolve()} (VALDO matching, centres closer than {dist_mm:g} mm)"
    return write_index(report_dir / "index.html", entries, sources, evaluation=aggregate, evaluation_note=note,
                       evaluation_images=copy_images(eval_pngs, report_dir / "evaluation", report_dir),
                       extras=copy_images(extras, report_dir / "extras", report_dir), compared=ref_dir is not None)


def _reference_aggregate(entries: Sequence[CaseEntry], references: dict[str, Path], ref_dir: Path,
                         dist_mm: float) -> tuple[dict[str, Any] | None, str]:
    """``cmbunet_evaluate``'s aggregates over the reference cases, and a note saying where they come from."""
    scored = {e.case: e.metrics for e in entries if e.metrics is not None}
    note = (f"Computed by this report against {ref_dir} with the official VALDO rule (linking distance "
            f"{dist_mm:g} mm): the numbers cmbunet_evaluate gives.")
    unscored = sorted(set(references) - set(scored))
    if unscored:
        note += f" Not scored (see their problems): {', '.join(unscored)}."
    return (report_aggregate(scored) if scored else None), note


def build_parser() -> argparse.ArgumentParser:
    p = command_parser("cmbunet_report", "Visual quality-control report of a cmbunet prediction folder: PNG sheets "
                       "per case and an index.html that opens offline.")
    p.add_argument("-i", "--input", dest="pred_dir", required=True,
                   help="prediction folder written by cmbunet_predict, in any of its layouts (flat, per case, BIDS "
                        "derivative)")
    p.add_argument("-img", "--images", dest="images", default=None,
                   help="the images that were predicted (VALDO tree, BIDS dataset, folder of CASE_0000.nii.gz or one "
                        "file); "
                        "without it only the masks are drawn")
    p.add_argument("-ref", "--reference", dest="reference", default=None,
                   help="reference labels, as for cmbunet_evaluate (VALDO tree, labelsTr-style folder or a dataset "
                        "folder with labelsTr/): draws the reference, marks detections as true/false positives, "
                        "shows missed CMBs and sorts the cases worst first")
    add_dist_option(p, "with -ref: a detection matches a reference CMB whose centre is closer than this many mm "
                       "(default: %(default)s, as cmbunet_evaluate)")
    p.add_argument("-o", "--output", dest="report_dir", required=True, help="report folder (created)")
    p.add_argument("--max-cmbs-per-sheet", type=int, default=DEFAULT_MAX_CMBS_PER_SHEET,
                   help=f"CMB rows per PNG sheet; more sheets are written when needed (default {DEFAULT_MAX_CMBS_PER_SHEET})")
    p.add_argument("--overview-slices", type=int, default=16, help="axial slices in the overview mosaic (default 16)")
    p.add_argument("--extra-images", nargs="+", default=[], metavar="PATH",
                   help="images or folders of images (e.g. training progress.png, FROC plots) to show on the page")
    return p


@run_cli
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.overview_slices < 1:
        raise InputError(None, f"--overview-slices must be at least 1, got {args.overview_slices}")
    index = write_report(args.pred_dir, args.images, args.report_dir, args.max_cmbs_per_sheet, args.extra_images,
                         args.overview_slices, args.reference, args.dist)
    print(f"report written: {index}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
