"""Connected components of a binary map: the one labelling rule of cmbunet and the per-component numbers that
the fingerprint, preprocessing, prediction, evaluation and the report all tabulate.

One CMB is one 26-connected component (voxels touching by a face, an edge or a corner), VALDO's rule. The
statistics run on the labelled voxels only (per-label bincounts over their coordinates): CMBs cover a millionth
of a scan, and ``ndimage.center_of_mass`` builds full-volume coordinate grids for every call (tens of seconds
on a 512x512x200 scan). The centres equal ``ndimage.center_of_mass(mask, labels, 1..n)`` bit for bit, as both
add the same coordinates in the same (C) order and divide by the same counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from cmbunet.utilities.geometry import voxel_to_world

#: Full 3x3x3 neighbourhood: voxels touching by a face, an edge or a corner belong to one component.
STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)
#: Columns of a table of component centres in an image's geometry (:func:`centre_table`).
CENTRE_COLUMNS = ("id", "i", "j", "k", "x_mm", "y_mm", "z_mm", "volume_mm3")

#: Labelled voxels: their indices (one array per axis) and their labels.
LabelledVoxels = tuple[tuple[np.ndarray, ...], np.ndarray]


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components of the non-zero voxels of ``mask``: labels 1..n and n."""
    labels, n = ndimage.label(mask, structure=STRUCTURE_26)
    return labels, int(n)


def labelled_voxels(labels: np.ndarray) -> LabelledVoxels:
    """Indices and labels of the labelled voxels, so that later statistics touch these few voxels only."""
    where = np.nonzero(labels)
    return where, labels[where]


def component_centres(labels: np.ndarray, n: int,
                      voxels: LabelledVoxels | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Centres of mass ``(n, ndim)`` in voxel indices and voxel counts ``(n,)`` of labelled components.

    ``voxels`` (from :func:`labelled_voxels`) saves the search for the labelled voxels when the caller has them.
    """
    if n == 0:
        return np.zeros((0, labels.ndim)), np.zeros(0, dtype=np.intp)
    where, lab = voxels if voxels is not None else labelled_voxels(labels)
    counts = np.bincount(lab, minlength=n + 1)[1:]
    sums = np.stack([np.bincount(lab, weights=axis, minlength=n + 1)[1:] for axis in where], axis=1)
    return sums / counts[:, None], counts


def component_maxima(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Highest value of ``values`` in each labelled component ``(n,)``: ``ndimage.maximum(values, labels, 1..n)``,
    computed on the labelled voxels only (that call sorts the whole volume: seconds on a full-size scan)."""
    if n == 0:
        return np.zeros(0)
    where, lab = labelled_voxels(labels)
    return np.asarray(ndimage.maximum(np.asarray(values)[where], lab, np.arange(1, n + 1)), dtype=float).reshape(-1)


def component_boxes(labels: np.ndarray, n: int) -> np.ndarray:
    """Half-open bounding boxes ``(n, ndim, 2)`` (``[start, stop)`` per axis) of labelled components."""
    boxes = [[[s.start, s.stop] for s in box] for box in ndimage.find_objects(labels, max_label=n)]
    return np.array(boxes, dtype=np.int64).reshape(n, labels.ndim, 2)


@dataclass(frozen=True)
class Components:
    """The labelled components of a binary map with their centres of mass and sizes (component ``l`` is row
    ``l - 1``)."""

    labels: np.ndarray
    count: int
    centres: np.ndarray  # (count, ndim) float, voxel indices
    num_voxels: np.ndarray  # (count,) int

    @property
    def ids(self) -> np.ndarray:
        """The labels 1..count, in row order."""
        return np.arange(1, self.count + 1)

    def boxes(self) -> np.ndarray:
        """Half-open bounding boxes ``(count, ndim, 2)``."""
        return component_boxes(self.labels, self.count)


def find_components(mask: np.ndarray) -> Components:
    """Label the 26-connected components of ``mask`` and measure their centres and sizes in one pass."""
    labels, n = label_components(mask)
    centres, counts = component_centres(labels, n)
    return Components(labels, n, centres, counts)


def empty_centre_table() -> pd.DataFrame:
    """A :func:`centre_table` without rows."""
    return pd.DataFrame({c: pd.Series(dtype=float) for c in CENTRE_COLUMNS})


def centre_table(ids: Sequence[Any], centres_vox: np.ndarray, num_voxels: np.ndarray,
                 geometry: Mapping[str, Any]) -> pd.DataFrame:
    """One row per component from continuous voxel centres ``(n, 3)``: id, centre voxel ``i, j, k`` (rounded),
    world centre ``x_mm, y_mm, z_mm`` (exact) and volume in mm^3 (``geometry``: spacing, origin, direction)."""
    centres_vox = np.asarray(centres_vox, dtype=float).reshape(-1, 3)
    if not len(centres_vox):
        return empty_centre_table()
    world = voxel_to_world(centres_vox, geometry)
    vox = np.rint(centres_vox).astype(np.int64)
    return pd.DataFrame({"id": list(ids), "i": vox[:, 0], "j": vox[:, 1], "k": vox[:, 2],
                         "x_mm": world[:, 0], "y_mm": world[:, 1], "z_mm": world[:, 2],
                         "volume_mm3": np.asarray(num_voxels, dtype=float) * float(np.prod(geometry["spacing"]))})
