"""Finding the predictions of a folder in every layout ``cmbunet_predict`` writes, for ``cmbunet_evaluate`` and
``cmbunet_report``.

* flat (``--output-format flat``): ``CASE.nii.gz`` or, for VALDO inputs, ``sub-XXX_space-T2S_prediction.nii.gz``,
  with ``CASE_cmbs.csv`` beside it;
* per case: the same names in a folder named after the case (``CASE/CASE.nii.gz``);
* BIDS derivatives (``--output-format bids``): ``sub-X/[ses-Y/]anat/<entities>_desc-cmb_mask.nii.gz`` with
  ``<entities>_desc-cmb_cmbs.tsv``; the case id is the entities without the ``desc`` that prediction added
  (``sub-X_ses-Y``), so it pairs with the reference and the input image of that session.

Probability maps (``_probabilities``, ``_probseg``) and hidden temporary files are never predictions. One case
found twice (in two layouts, or as two files) is an error that names both files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cmbunet.errors import InputError
from cmbunet.inference.bids import DESC, bids_entities
from cmbunet.utilities.case_names import image_stem

VALDO_PREDICTION_SUFFIX = "_space-T2S_prediction"
PROBABILITIES_SUFFIX = "_probabilities"
#: The binary map of a BIDS derivative, ``<entities>_desc-<label>_mask`` (any image ending).
BIDS_MASK_RE = re.compile(r"^(?P<entities>sub-[^/]+)_mask$")


@dataclass(frozen=True)
class PredictionFiles:
    """The binary map of one case and its CMB table (``None`` when the layout's table is absent)."""

    case: str
    mask: Path
    table: Path | None
    layout: str  # flat, case folder or BIDS


def _flat_case(path: Path) -> str | None:
    """The case of a flat prediction file (``CASE.nii.gz``, ``sub-X_space-T2S_prediction.nii.gz``), or None."""
    stem = image_stem(path.name)
    if stem is None or path.name.startswith(".") or not path.is_file() or stem.endswith(PROBABILITIES_SUFFIX):
        return None
    return stem[: -len(VALDO_PREDICTION_SUFFIX)] if stem.endswith(VALDO_PREDICTION_SUFFIX) else stem


def bids_mask_case(path: Path, desc_of_prediction: bool = True) -> str | None:
    """The case id of a BIDS ``..._mask.nii.gz``: its entities without ``desc``, or None for another file.

    ``desc_of_prediction``: the ``desc`` is prediction's (``cmb``, or a source label before it, ``maskedcmb``,
    which is kept as ``desc-masked``) and any other ``desc`` is not a prediction; else any ``desc`` is dropped
    (reference masks)."""
    stem = image_stem(path.name)
    m = BIDS_MASK_RE.match(stem or "")
    entities = bids_entities(m.group("entities")) if m and not path.name.startswith(".") else None
    if entities is None:
        return None
    desc = dict(entities).get("desc")
    kept = [f"{k}-{v}" for k, v in entities if k != "desc"]
    if desc_of_prediction:
        if desc is None or not desc.endswith(DESC):
            return None
        if desc != DESC:
            kept.append(f"desc-{desc[: -len(DESC)]}")
    return "_".join(kept)


def _add(found: dict[str, PredictionFiles], item: PredictionFiles) -> None:
    if item.case in found:
        raise InputError(item.mask.parent, f"case {item.case} has 2 prediction files ({found[item.case].mask}, "
                                           f"{item.mask}); keep one")
    found[item.case] = item


def _table(path: Path) -> Path | None:
    return path if path.is_file() else None


def find_predictions(pred_dir: str | Path) -> dict[str, PredictionFiles]:
    """Case id -> its prediction files, in every layout ``cmbunet_predict`` writes (see the module docstring)."""
    pred_dir = Path(pred_dir)
    found: dict[str, PredictionFiles] = {}
    for path in sorted(pred_dir.iterdir()):
        if (case := _flat_case(path)) is not None:
            _add(found, PredictionFiles(case, path, _table(pred_dir / f"{case}_cmbs.csv"), "flat"))
        elif path.is_dir() and not path.name.startswith("."):
            for inner in sorted(path.iterdir()):
                if _flat_case(inner) == path.name:
                    _add(found, PredictionFiles(path.name, inner, _table(path / f"{path.name}_cmbs.csv"),
                                                "case folder"))
            if path.name.startswith("sub-"):
                for inner in sorted(path.rglob("*_mask.nii*")):
                    if (case := bids_mask_case(inner)) is not None and inner.is_file():
                        tsv = inner.with_name(inner.name[: inner.name.index("_mask.nii")] + "_cmbs.tsv")
                        _add(found, PredictionFiles(case, inner, _table(tsv), "BIDS"))
    return found
