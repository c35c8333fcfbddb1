"""What a report sheet draws, in voxel-index space: the prediction, the optional reference and T2* image on
the same grid, and the CMB tables, plus the geometry and intensity helpers they need."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from skimage.filters import threshold_otsu

from cmbunet.imageio.reader_writer import ImageProperties
from cmbunet.utilities.components import centre_table, empty_centre_table, find_components
from cmbunet.utilities.geometry import direction_matrix, world_to_voxel

#: Percentiles of the brain intensities that map to black and white.
WINDOW_PERCENTILES = (0.5, 99.5)
#: Without an image the mask itself is the background: 0 black, 1 light grey under the red outline.
MASK_ONLY_WINDOW = (0.0, 1.25)


@dataclass
class CaseVolumes:
    """What one sheet needs: the binary prediction, its geometry, the T2* image on the same grid (or None)
    and the CMB table with centre voxels ``i, j, k`` and, where known, volume and scores.

    With a reference, ``reference`` is its binary mask on the same grid, ``cmbs`` has an ``outcome`` column
    (``TP``, ``FP``) and ``missed`` lists the reference CMBs no detection matched (false negatives), with
    the same centre and volume columns."""

    case: str
    mask: np.ndarray
    geometry: ImageProperties
    image: np.ndarray | None
    cmbs: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    reference: np.ndarray | None = None
    missed: pd.DataFrame | None = None

    @property
    def compared(self) -> bool:
        """Whether detections were matched against a reference (TP/FP/FN known)."""
        return self.reference is not None

    @property
    def missed_rows(self) -> pd.DataFrame:
        return self.missed if self.missed is not None else empty_centre_table()


# ------------------------------------------------------------------------------------------------ geometry
def axis_letters(geometry: ImageProperties) -> list[tuple[str, str]]:
    """For each voxel axis, the anatomical letters of its low and high end (LPS world: +x=L, +y=P, +z=S).

    The dominant direction cosine decides, so an oblique scan gets the nearest anatomical direction."""
    ends = (("R", "L"), ("A", "P"), ("I", "S"))
    d = direction_matrix(geometry)
    out = []
    for axis in range(3):
        world = int(np.argmax(np.abs(d[:, axis])))
        low, high = ends[world]
        out.append((low, high) if d[world, axis] > 0 else (high, low))
    return out


# ------------------------------------------------------------------------------------------------ CMB table
def cmbs_from_mask(mask: np.ndarray, geometry: ImageProperties) -> pd.DataFrame:
    """One row per 26-connected component: id, centre voxel (centre of mass, rounded), world centre, volume."""
    cmbs = find_components(mask)
    return centre_table(cmbs.ids, cmbs.centres, cmbs.num_voxels, geometry)


def normalise_cmb_table(table: pd.DataFrame | None, mask: np.ndarray, geometry: ImageProperties) -> tuple[pd.DataFrame, list[str]]:
    """Make a CMB table drawable: ids, integer centre voxels inside the volume; notes say what was filled in.

    Centres come from ``i, j, k``, else from the world columns, else the whole table is rebuilt from the
    mask, so an incomplete or absent CSV never prevents a sheet."""
    notes: list[str] = []
    if table is None:
        return cmbs_from_mask(mask, geometry), notes
    table = table.copy()
    if not {"i", "j", "k"} <= set(table.columns):
        if {"x_mm", "y_mm", "z_mm"} <= set(table.columns):
            vox = world_to_voxel(table[["x_mm", "y_mm", "z_mm"]].to_numpy(float), geometry)
            table[["i", "j", "k"]] = np.rint(vox).astype(np.int64)
            notes.append("CMB table has no voxel centres (i, j, k); they were computed from the world centres")
        else:
            notes.append("CMB table has neither voxel (i, j, k) nor world (x_mm, y_mm, z_mm) centres; "
                         "CMBs were taken from the mask instead")
            return cmbs_from_mask(mask, geometry), notes
    centres = table[["i", "j", "k"]].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    bad = ~np.isfinite(centres).all(axis=1)
    shape = np.asarray(mask.shape)
    outside = ~bad & ((np.nan_to_num(centres) < 0) | (np.nan_to_num(centres) > shape - 1)).any(axis=1)
    if bad.any() or outside.any():
        notes.append(f"{int(bad.sum() + outside.sum())} CMB row(s) without a usable centre inside the image were skipped")
    table = table.loc[~(bad | outside)].copy()
    table[["i", "j", "k"]] = np.rint(centres[~(bad | outside)]).astype(np.int64)
    if "id" not in table.columns:
        table.insert(0, "id", np.arange(1, len(table) + 1))
    return table.reset_index(drop=True), notes


# ------------------------------------------------------------------------------------------------ intensities
def brain_mask(image: np.ndarray) -> np.ndarray:
    """Voxels brighter than Otsu's threshold: the brain of a skull-stripped scan, the head otherwise."""
    finite = np.isfinite(image)
    values = image[finite]
    if values.size == 0 or values.min() == values.max():
        return finite
    return finite & (image > threshold_otsu(values))


def display_window(image: np.ndarray, brain: np.ndarray | None = None) -> tuple[float, float]:
    """Black and white levels from robust percentiles of the brain, so bright vessels or zero backgrounds
    do not wash out the contrast in which CMBs are judged."""
    values = image[brain] if brain is not None and brain.any() else image[np.isfinite(image)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, WINDOW_PERCENTILES))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def case_window(vol: CaseVolumes) -> tuple[float, float]:
    """Display window of a case: from its T2* image, or the fixed mask-only window."""
    return display_window(vol.image, brain_mask(vol.image)) if vol.image is not None else MASK_ONLY_WINDOW
