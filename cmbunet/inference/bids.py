"""BIDS-derivative outputs of ``cmbunet_predict --output-format bids``.

The output folder becomes a BIDS derivative dataset::

    OUTPUT/dataset_description.json                      DatasetType "derivative", GeneratedBy cmbunet
    OUTPUT/sub-X/[ses-Y/]anat/<entities>_desc-cmb_mask.nii.gz       binary CMB map (uint8), input geometry
    OUTPUT/sub-X/[ses-Y/]anat/<entities>_desc-cmb_probseg.nii.gz    probabilities (with --save-probabilities)
    OUTPUT/sub-X/[ses-Y/]anat/<entities>_desc-cmb_cmbs.tsv          one row per CMB
    OUTPUT/sub-X/[ses-Y/]anat/<entities>_desc-cmb_cmbs.json         description of the TSV columns

``<entities>`` is the case id, i.e. the BIDS entities of the input file (``sub-01_ses-2_acq-3D``); a VALDO case
``sub-101`` gives ``sub-101_desc-cmb_mask.nii.gz``. Every file is written atomically.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from cmbunet import __version__
from cmbunet.errors import InputError
from cmbunet.utilities.file_io import atomic_path, load_json, save_json, save_text

BIDS_VERSION = "1.10.0"
DESCRIPTION_FILE = "dataset_description.json"
#: The ``desc`` label of every output; a source ``desc`` label is kept in front of it (``desc-maskedcmb``).
DESC = "cmb"
ENTITY_RE = re.compile(r"^[A-Za-z0-9]+-[^_/]+$")

DATASET_DESCRIPTION: dict[str, Any] = {
    "Name": "cmbunet cerebral microbleed predictions",
    "BIDSVersion": BIDS_VERSION,
    "DatasetType": "derivative",
    "GeneratedBy": [{
        "Name": "cmbunet",
        "Version": __version__,
        "Description": "screening FCN, discrimination CNN and segmentation U-Net; cerebral microbleeds (CMBs) "
                       "in T2*-weighted MRI, written in the geometry of each input image",
    }],
}

#: Description of the columns of ``*_desc-cmb_cmbs.tsv`` (the JSON sidecar of every TSV).
CMB_TSV_SIDECAR: dict[str, Any] = {
    "Description": "One row per predicted cerebral microbleed: a 26-connected component of the binary map "
                   "*_desc-cmb_mask.nii.gz beside this file.",
    "id": {"Description": "CMB number, 1, 2, ... (in the order of the connected-component labelling)"},
    "i": {"Description": "voxel index along the first image axis of the CMB's centre of mass, rounded (0-based)"},
    "j": {"Description": "voxel index along the second image axis of the CMB's centre of mass, rounded (0-based)"},
    "k": {"Description": "voxel index along the third image axis of the CMB's centre of mass, rounded (0-based)"},
    "x_mm": {"Description": "world x of the centre of mass: origin + direction * (index * spacing), in ITK's LPS "
                            "convention; negate x and y for the RAS+ coordinates of the NIfTI header", "Units": "mm"},
    "y_mm": {"Description": "world y of the centre of mass (LPS, see x_mm)", "Units": "mm"},
    "z_mm": {"Description": "world z of the centre of mass (LPS, see x_mm; the same in RAS+)", "Units": "mm"},
    "volume_mm3": {"Description": "number of voxels times the voxel volume of the input image", "Units": "mm^3"},
    "num_voxels": {"Description": "number of voxels of the CMB in the input image's grid"},
    "screening_score": {"Description": "screening probability of the candidate that produced the CMB (the kept "
                                       "candidate nearest to it); n/a when there is none"},
    "discrimination_score": {"Description": "discrimination probability of that candidate; n/a when there is none"},
    "segmentation_score": {"Description": "highest voxel probability of the segmentation inside the CMB (the "
                                          "maximum of *_desc-cmb_probseg.nii.gz over the CMB)"},
}


def bids_entities(case: str) -> list[tuple[str, str]] | None:
    """``[("sub", "01"), ("ses", "2"), ...]`` for a case id made of BIDS entities, else None."""
    parts = case.split("_")
    if not parts[0].startswith("sub-") or len(parts[0]) == len("sub-") or not all(ENTITY_RE.match(p) for p in parts):
        return None
    return [tuple(p.split("-", 1)) for p in parts]  # type: ignore[misc]


def not_bids_problem(case: str) -> str | None:
    """Why a case cannot be written as a BIDS derivative (its id is no ``sub-<label>[_key-value...]``), or None."""
    if bids_entities(case) is None:
        return (f"case id {case} is not made of BIDS entities (sub-<label>[_ses-<label>]...); --output-format bids "
                "needs BIDS or VALDO inputs, or use the default --output-format flat")
    return None


def case_paths(output_dir: str | Path, case: str, save_probabilities: bool,
               save_candidates: bool = False) -> dict[str, Path | None]:
    """The output files of one case: ``mask``, ``probseg`` (None without probabilities), ``cmbs``, ``cmbs_sidecar``,
    ``candidates`` (None unless asked for)."""
    entities = bids_entities(case)
    if entities is None:
        raise InputError(None, not_bids_problem(case) or case)
    values = dict(entities)
    folder = Path(output_dir) / f"sub-{values['sub']}"
    if "ses" in values:
        folder = folder / f"ses-{values['ses']}"
    folder = folder / "anat"
    desc = values["desc"] + DESC if "desc" in values else DESC
    stem = "_".join(f"{k}-{v}" for k, v in entities if k != "desc") + f"_desc-{desc}"
    return {"mask": folder / f"{stem}_mask.nii.gz",
            "probseg": folder / f"{stem}_probseg.nii.gz" if save_probabilities else None,
            "cmbs": folder / f"{stem}_cmbs.tsv", "cmbs_sidecar": folder / f"{stem}_cmbs.json",
            "candidates": folder / f"{stem}_candidates.tsv" if save_candidates else None}


def write_dataset_description(output_dir: str | Path) -> Path:
    """Write ``dataset_description.json`` (and a ``.bidsignore`` for the run summaries) into ``output_dir``.

    An existing description of another dataset (a raw BIDS dataset, another pipeline's derivatives) is never
    replaced: the command stops before any case runs."""
    out = Path(output_dir)
    path = out / DESCRIPTION_FILE
    if path.is_file():
        try:
            existing = load_json(path)
            generated = existing.get("GeneratedBy") or [{}]
            ours = existing.get("DatasetType") == "derivative" and generated[0].get("Name") == "cmbunet"
        except (ValueError, UnicodeDecodeError, AttributeError, TypeError, IndexError):
            ours = False
        if not ours:
            raise InputError(path, "belongs to another dataset (not a cmbunet derivative); choose an empty output "
                                   "folder, e.g. BIDS_ROOT/derivatives/cmbunet")
    save_json(DATASET_DESCRIPTION, path)
    if not (out / ".bidsignore").exists():
        save_text("summary*.csv\nprediction_record.json\n", out / ".bidsignore")
    return path


def write_cmb_tsv(table: pd.DataFrame, path: str | Path, sidecar: str | Path | None) -> None:
    """The CMB table as BIDS TSV (tab-separated, ``n/a`` for missing values) and its JSON sidecar, atomically."""
    if sidecar is not None:
        save_json(CMB_TSV_SIDECAR, sidecar)
    with atomic_path(path, suffix=".tsv") as tmp:
        table.to_csv(tmp, sep="\t", index=False, na_rep="n/a", float_format="%.6g")


def read_cmb_tsv(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)
