"""What a prediction produces: the :class:`CasePrediction` of a case, its CMB table in the native geometry of
the input, and the one writer of a case's files.

Per case, ``cmbunet_predict`` writes ``CASE_probabilities.nii.gz`` (optional), ``CASE_cmbs.csv`` and last the
binary map, each atomically, so the binary map marks a finished case; ``summary.csv`` gets one line per case.
The validation of a cross-validation fold writes its files with the same :func:`write_case` (probabilities,
candidates, then the binary map).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from cmbunet.errors import InputError
from cmbunet.imageio.reader_writer import ImageProperties, SimpleITKIO
from cmbunet.inference import bids
from cmbunet.inference.input_cases import InputCase
from cmbunet.preprocessing.resampling import map_points_to_new_grid
from cmbunet.utilities.components import centre_table, component_maxima, find_components, label_components
from cmbunet.utilities.file_io import atomic_path, outputs_complete

CMB_COLUMNS = ["id", "i", "j", "k", "x_mm", "y_mm", "z_mm", "volume_mm3", "num_voxels",
               "screening_score", "discrimination_score", "segmentation_score"]
CANDIDATE_COLUMNS = ["x", "y", "z", "screening_score", "discrimination_score", "spot_elongation", "spot_diameter_mm",
                     "round_spot_elongation", "csf_share", "blob_ratio", "inplane_elongation", "kept"]
TIMING_KEYS = ("read", "preprocess", "screening", "discrimination", "segmentation", "export", "write")
#: Candidate tables keep 8 digits: the threshold search reads their scores again.
CANDIDATE_FLOAT_FORMAT = "%.8g"


# ------------------------------------------------------------------------------------------------ one case
@dataclass(frozen=True)
class CasePrediction:
    """Everything the prediction of one case produces, as :meth:`CMBPredictor.predict_preprocessed` returns it;
    :func:`write_case` writes it."""

    probabilities: np.ndarray  # (X, Y, Z) float32 on the native grid
    binary: np.ndarray  # (X, Y, Z) uint8 on the native grid, probabilities >= segmentation threshold
    cmbs: pd.DataFrame  # one row per CMB (CMB_COLUMNS), as in CASE_cmbs.csv
    geometry: ImageProperties  # of the native grid: what the maps are written with
    #: every screening candidate: preprocessed voxel, scores, dark-spot shape, kept, native voxel and world position
    candidates: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=CANDIDATE_COLUMNS))
    probabilities_preprocessed: np.ndarray | None = None  # (X', Y', Z') in the preprocessed space
    timings: Mapping[str, float] = field(default_factory=dict)  # seconds per step (TIMING_KEYS)
    properties: Mapping[str, Any] = field(default_factory=dict)  # the preprocessing properties of the case


# ------------------------------------------------------------------------------------------------ CMB table
def preprocessed_to_native(points: np.ndarray, properties: Mapping[str, Any]) -> np.ndarray:
    """Continuous native voxel positions of preprocessed voxels: undo the resampling, then the crop."""
    pts = map_points_to_new_grid(np.asarray(points, dtype=float).reshape(-1, 3),
                                 properties["shape_after_resampling"], properties["shape_after_crop"])
    return pts + np.asarray(properties["crop_bbox"], dtype=float)[:, 0]


def drop_small_components(binary: np.ndarray, probabilities: np.ndarray, min_voxels: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove CMBs (26-connected) of fewer than ``min_voxels`` native voxels from the binary map and zero their
    probabilities, so both outputs keep agreeing (``min_component_voxels``, chosen on validation data)."""
    if min_voxels <= 1 or not binary.any():
        return binary, probabilities
    labels, n = label_components(binary > 0)
    small = np.bincount(labels.ravel(), minlength=n + 1) < int(min_voxels)
    small[0] = False
    drop = small[labels]
    binary, probabilities = binary.copy(), probabilities.copy()
    binary[drop], probabilities[drop] = 0, 0.0
    return binary, probabilities


def nearest_candidate_scores(centres: np.ndarray, candidates: pd.DataFrame | None,
                             spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Screening and discrimination scores of the kept candidate nearest (in mm) to each native voxel centre
    ``(n, 3)``; NaN without kept candidates."""
    scr = disc = np.full(len(centres), np.nan)
    if candidates is not None and len(candidates) and "native_i" in candidates:
        kept = candidates[candidates["kept"]]
        if len(kept):
            cpos = kept[["native_i", "native_j", "native_k"]].to_numpy(float) * spacing
            dist = np.linalg.norm(centres[:, None, :] * spacing - cpos[None], axis=2)
            nearest = dist.argmin(axis=1)
            scr = kept["screening_score"].to_numpy(float)[nearest]
            disc = kept["discrimination_score"].to_numpy(float)[nearest]
    return scr, disc


def cmb_table(binary: np.ndarray, probabilities: np.ndarray, geometry: Mapping[str, Any],
              candidates: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per 26-connected CMB of the native binary map.

    Centre = centre of mass (voxel i, j, k rounded; world mm exact). The screening and discrimination scores are
    those of the kept candidate nearest to the CMB; the segmentation score is the CMB's highest probability.
    """
    cmbs = find_components(binary > 0)
    if cmbs.count == 0:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in CMB_COLUMNS})
    table = centre_table(cmbs.ids, cmbs.centres, cmbs.num_voxels, geometry)
    table["num_voxels"] = cmbs.num_voxels
    scr, disc = nearest_candidate_scores(cmbs.centres, candidates, np.asarray(geometry["spacing"], dtype=float))
    table["screening_score"], table["discrimination_score"] = scr, disc
    table["segmentation_score"] = component_maxima(probabilities, cmbs.labels, cmbs.count)
    return table[CMB_COLUMNS]


# ------------------------------------------------------------------------------------------------ outputs
@dataclass(frozen=True)
class CaseOutputs:
    """The files written for one case (``None``: not written); the binary prediction is written last and marks a
    finished case."""

    prediction: Path
    cmbs: Path | None
    probabilities: Path | None
    cmbs_sidecar: Path | None = None  # the JSON sidecar of a BIDS ``.tsv`` table
    candidates: Path | None = None  # every screening candidate (cross-validation, or --save-candidates)

    @classmethod
    def for_case(cls, output_dir: Path, case: InputCase, save_probabilities: bool,
                 output_format: str = "flat", save_candidates: bool = False) -> "CaseOutputs":
        """``flat``: ``CASE.nii.gz`` (VALDO: ``sub-XXX_space-T2S_prediction.nii.gz``), ``CASE_cmbs.csv``,
        ``CASE_probabilities.nii.gz`` and ``CASE_candidates.csv`` in ``output_dir``; ``bids``: a BIDS derivative
        (:mod:`cmbunet.inference.bids`)."""
        if output_format == "bids":
            p = bids.case_paths(output_dir, case.case, save_probabilities, save_candidates)
            return cls(p["mask"], p["cmbs"], p["probseg"], p["cmbs_sidecar"], p["candidates"])
        out = Path(output_dir)
        return cls(out / f"{case.output_stem}.nii.gz", out / f"{case.case}_cmbs.csv",
                   out / f"{case.case}_probabilities.nii.gz" if save_probabilities else None,
                   candidates=out / f"{case.case}_candidates.csv" if save_candidates else None)

    def paths(self) -> Iterator[Path]:
        """Every file that is written, the binary prediction last."""
        for path in (self.probabilities, self.cmbs_sidecar, self.cmbs, self.candidates, self.prediction):
            if path is not None:
                yield path

    def finished(self) -> bool:
        return outputs_complete(self.paths())


def refuse_overwriting_inputs(cases: Sequence[InputCase], output_dir: Path, save_probabilities: bool,
                              summary_path: Path, output_format: str = "flat", save_candidates: bool = False) -> None:
    """Stop before writing anything when an output file would replace one of the input images."""
    inputs = {Path(p).resolve() for case in cases for p in case.images}
    for case in cases:
        if not case.ok:
            continue
        outputs = CaseOutputs.for_case(output_dir, case, save_probabilities, output_format, save_candidates)
        for path in (*outputs.paths(), summary_path):
            if path.resolve() in inputs:
                raise InputError(path, "is an input image and would be overwritten by the prediction; "
                                       "choose another output folder")


def write_csv(table: pd.DataFrame, path: Path, float_format: str = "%.6g") -> None:
    """CSV (tab-separated for a ``.tsv`` path) written atomically."""
    with atomic_path(path, suffix=path.suffix or ".csv") as tmp:
        table.to_csv(tmp, index=False, float_format=float_format, sep="\t" if path.suffix == ".tsv" else ",")


def write_case(prediction: CasePrediction, outputs: CaseOutputs) -> None:
    """The requested files of one case, each atomically: probabilities, the CMB table, the candidates, then the
    binary map, whose presence marks the case finished."""
    geometry = prediction.geometry
    if outputs.probabilities is not None:
        SimpleITKIO.write(prediction.probabilities.astype(np.float32), outputs.probabilities, geometry)
    if outputs.cmbs is not None and outputs.cmbs.suffix == ".tsv":
        bids.write_cmb_tsv(prediction.cmbs, outputs.cmbs, outputs.cmbs_sidecar)
    elif outputs.cmbs is not None:
        write_csv(prediction.cmbs, outputs.cmbs)
    if outputs.candidates is not None:
        write_csv(prediction.candidates, outputs.candidates, CANDIDATE_FLOAT_FORMAT)
    SimpleITKIO.write(prediction.binary.astype(np.uint8), outputs.prediction, geometry)


def summary_row(case: str, status: str, prediction: CasePrediction | None = None, error: str = "") -> dict[str, Any]:
    """One line of ``summary.csv``."""
    row: dict[str, Any] = {"case": case, "status": status, "error": error}
    if prediction is not None:
        cmbs, candidates = prediction.cmbs, prediction.candidates
        row.update(num_cmbs=len(cmbs), total_volume_mm3=float(cmbs["volume_mm3"].sum()) if len(cmbs) else 0.0,
                   num_candidates=len(candidates), num_kept=int(candidates["kept"].sum()) if len(candidates) else 0)
        timings = prediction.timings
        row.update({f"seconds_{k}": timings.get(k, np.nan) for k in TIMING_KEYS})
        row["seconds_total"] = float(sum(timings.get(k, 0.0) for k in TIMING_KEYS))
    return row


def skipped_row(case: InputCase, outputs: CaseOutputs, previous: pd.DataFrame | None) -> dict[str, Any]:
    """Summary line of a case finished by an earlier run: its earlier line when known, else from its CSV."""
    if previous is not None and "case" in previous and (previous["case"] == case.case).any():
        row = previous[previous["case"] == case.case].iloc[-1].to_dict()
        if row.get("status") == "ok" or str(row.get("status", "")).startswith("skipped"):
            row["status"] = "skipped (done before)"
            return row
    if outputs.cmbs is None:
        return {"case": case.case, "status": "skipped (done before)", "error": ""}
    try:
        cmbs = bids.read_cmb_tsv(outputs.cmbs) if outputs.cmbs.suffix == ".tsv" else pd.read_csv(outputs.cmbs)
        extra = {"num_cmbs": len(cmbs), "total_volume_mm3": float(cmbs["volume_mm3"].sum()) if len(cmbs) else 0.0}
    except (OSError, ValueError, KeyError, pd.errors.EmptyDataError):
        extra = {}
    return {"case": case.case, "status": "skipped (done before)", "error": "", **extra}


def summary_name(num_parts: int, part_id: int) -> str:
    """``summary.csv``, or one file per part so parallel parts never overwrite each other's summary."""
    return "summary.csv" if num_parts == 1 else f"summary_part{part_id}of{num_parts}.csv"
