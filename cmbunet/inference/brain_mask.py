"""Skull-stripped input: brain masks given with ``--brain-mask`` and the check that an image is stripped.

The model was trained on skull-stripped T2*-weighted GRE magnitude (or SWI) images whose voxels outside the brain
are 0; preprocessing takes "any channel non-zero" to be the brain. A whole-head scan would be predicted with its
scalp, skull and background as brain, giving detections there. So prediction either applies a brain mask per case
(``--brain-mask FOLDER``: voxels outside it set to 0 before preprocessing, the input files are never changed), or
checks that each image is stripped and stops with an error naming the file otherwise (``--allow-unstripped``
predicts it as it is). Nothing is stripped automatically.

The check (:func:`unstripped_problem`) is deliberately simple. A stripped brain leaves the border of the field of
view empty and fills at most about 2 litres; a whole-head magnitude image has noise in its background (non-zero
nearly everywhere) and a head of 4 litres or more. Measured on the project's synthetic stripped images: 0% of the
outer shell non-zero (4.5-6.5% when cropped to the brain's bounding box), 50-90 mL (small) and 1.7-1.9 L (realistic
size); with a bright scalp shell and background noise added: 100% of the shell (tests/test_brain_mask.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from cmbunet.errors import InputError
from cmbunet.imageio.reader_writer import SUPPORTED_ENDINGS, ImageProperties, SimpleITKIO, geometry_mismatch
from cmbunet.inference.bids import bids_entities

#: The outer shell: this share of the field of view along each axis, at each end (at least one voxel).
SHELL_FRACTION = 0.05
#: More than this share of the shell non-zero: the background is not empty, the image is not stripped.
MAX_SHELL_SHARE = 0.5
#: More non-zero volume than this (mL): more than any brain; the image holds a head.
MAX_BRAIN_ML = 3000.0
#: A field of view narrower than this (mm) along every axis cannot hold a head: it is not checked.
MIN_CHECKED_FOV_MM = 60.0
#: What to do with an image that is not stripped, in every message that finds one.
REMEDY = ("the model expects skull-stripped T2*-weighted GRE magnitude or SWI images, zero outside the brain: strip "
          "the skull first (e.g. with SynthStrip or HD-BET), or pass --brain-mask FOLDER with one brain mask per "
          "case (CASE.nii.gz, or BIDS *_desc-brain_mask.nii.gz), or pass --allow-unstripped to predict it as it is")


def shell_share(nonzero: np.ndarray, fraction: float = SHELL_FRACTION) -> float:
    """Share of the voxels in the outer ``fraction`` of the field of view (each axis, each end) that are non-zero."""
    shell = np.ones(nonzero.shape, dtype=bool)
    inner = tuple(slice(w, n - w) for n in nonzero.shape for w in [max(1, int(round(fraction * n)))])
    shell[inner] = False
    return float(nonzero[shell].mean()) if shell.any() else 0.0


def unstripped_problem(image: np.ndarray, spacing: Sequence[float]) -> str | None:
    """Why ``image`` (X, Y, Z; NaN counts as 0) does not look skull-stripped, or None."""
    extent = np.asarray(image.shape) * np.asarray(spacing, dtype=float)
    if (extent < MIN_CHECKED_FOV_MM).all():
        return None
    nonzero = np.isfinite(image) & (image != 0)
    share = shell_share(nonzero)
    volume_ml = float(nonzero.sum() * np.prod(np.asarray(spacing, dtype=float))) / 1000.0
    if share > MAX_SHELL_SHARE:
        found = (f"{share:.0%} of the outer {SHELL_FRACTION:.0%} of its field of view is non-zero (a stripped image "
                 f"is empty there; limit {MAX_SHELL_SHARE:.0%})")
    elif volume_ml > MAX_BRAIN_ML:
        found = (f"its non-zero voxels fill {volume_ml:.0f} mL, more than a brain (at most about 2000 mL; limit "
                 f"{MAX_BRAIN_ML:.0f} mL)")
    else:
        return None
    return f"does not look skull-stripped: {found}; {REMEDY}"


def mask_candidates(folder: Path, case: str) -> list[Path]:
    """Where the brain mask of ``case`` may lie in ``folder``: ``CASE.nii.gz`` or ``CASE_desc-brain_mask.nii.gz`` at
    its top (any image ending), and for BIDS case ids ``sub-X/[ses-Y/]anat/CASE[_...]_desc-brain_mask.nii.gz`` (a
    BIDS dataset or a derivative of masks)."""
    found = [folder / f"{case}{suffix}{ending}" for suffix in ("", "_desc-brain_mask") for ending in SUPPORTED_ENDINGS]
    entities = bids_entities(case)
    if entities is not None:
        values = dict(entities)
        sub = folder / f"sub-{values['sub']}"
        where = sub / f"ses-{values['ses']}" if "ses" in values else sub
        for inner in (where / "anat", where):
            found += sorted(p for p in inner.glob(f"{case}_*desc-brain_mask.nii*") if p.name.endswith(SUPPORTED_ENDINGS))
    return list(dict.fromkeys(p for p in found if p.is_file()))


def find_brain_mask(folder: str | Path, case: str) -> Path:
    """The one brain mask of ``case`` in ``folder``; none or several is an :class:`InputError` saying which names
    are read."""
    folder = Path(folder)
    found = mask_candidates(folder, case)
    if len(found) > 1:
        raise InputError(folder, f"{len(found)} brain masks for case {case} ({', '.join(p.name for p in found)}); "
                                 "keep one")
    if not found:
        raise InputError(folder, f"no brain mask for case {case}; expected {case}.nii.gz or "
                                 f"{case}_desc-brain_mask.nii.gz (also in sub-XXX/[ses-YYY/]anat/ for BIDS cases)")
    return found[0]


def apply_brain_mask(images: np.ndarray, geometry: ImageProperties, mask_path: Path) -> np.ndarray:
    """``images`` (C, X, Y, Z) with every voxel outside the mask (its zeros) set to 0: a new array, the input files
    and arrays are not changed. The mask must lie on the image's grid."""
    mask, props = SimpleITKIO.read_seg(mask_path)
    problem = geometry_mismatch(geometry, props)
    if problem:
        raise InputError(mask_path, f"brain mask does not lie on the grid of its image: {problem}; write the mask "
                                    "in the image's geometry")
    inside = np.asarray(mask) != 0
    if not inside.any():
        raise InputError(mask_path, "brain mask is empty (no non-zero voxel)")
    return np.where(inside[None], images, np.float32(0)).astype(np.float32, copy=False)
