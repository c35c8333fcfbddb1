"""Where the dark spot under each candidate lies: a microbleed lies in the parenchyma, its commonest round mimic
does not.

Calcifications of the choroid plexus, the pineal gland and habenula, and the falx are round, dark and often as
small as a microbleed, so neither the networks nor the shape rule can tell them apart by their look; a rater
tells them apart by where they lie: inside the ventricles, a cistern or the interhemispheric fissure, with
cerebrospinal fluid all around. On T2*-weighted and SWI magnitude images CSF is the brightest tissue, so the
evidence is measured directly, like the spot's shape: the share of a thin shell around the spot that is CSF
(brighter than the case's CSF level) or outside the brain (exactly 0 after preprocessing). A microbleed beside
a sulcus or a ventricle has CSF on one side; a calcification in CSF has it all around.

The CSF level is the upper threshold of a three-class multi-Otsu split of the brain's voxels (white matter,
grey matter, CSF), found per case, so it follows each scanner's contrast and needs no training.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_multiotsu

from cmbunet.inference.shape import DarkSpots
from cmbunet.utilities.patches import extract_patches

#: The shell around the spot's edge whose tissue is measured, in mm: beyond the spot's own partial-volume rim,
#: within what a rater looks at. Chosen with the limit of the plans (0.6) on subjects of the training sites'
#: world (data seeds 7000-7017), never on held-out data: documentation/benchmarks.md, "Where a spot lies".
SHELL_MM = (0.5, 2.5)
#: At most this many brain voxels are used to find the CSF level (an even subsample; the split needs no more).
LEVEL_SAMPLES = 400_000


def csf_level(image: np.ndarray) -> float:
    """Intensity above which a voxel of this (skull-stripped, preprocessed) image counts as CSF: the upper
    threshold of a three-class multi-Otsu split of its non-zero voxels; ``inf`` when they cannot be split."""
    values = np.asarray(image)[np.asarray(image) != 0]
    values = values[np.isfinite(values)]
    if values.size > LEVEL_SAMPLES:
        values = values[:: int(np.ceil(values.size / LEVEL_SAMPLES))]
    if values.size < 30 or np.ptp(values) == 0:
        return float("inf")
    return float(threshold_multiotsu(values, classes=3)[1])


def csf_shares(image: np.ndarray, spots: DarkSpots, centres: np.ndarray, spacing: Sequence[float],
               level: float, shell_mm: tuple[float, float] = SHELL_MM) -> np.ndarray:
    """Share of the shell ``shell_mm`` beyond each spot's edge that is CSF (above ``level``) or outside the brain
    (0, or beyond the image), per centre ``(N,)``; a centre without a spot is measured around its own voxel.

    All spots at once: the boxes of :func:`~cmbunet.inference.shape.dark_spots` are stacked along a first axis
    whose spacing is so large that no distance crosses from one box to another.
    """
    centres = np.asarray(centres, dtype=np.int64).reshape(-1, 3)
    n = len(centres)
    if n == 0:
        return np.zeros(0)
    masks = spots.masks.copy()
    mid = np.array(spots.size) // 2
    empty = ~masks.reshape(n, -1).any(axis=1)
    masks[empty, mid[0], mid[1], mid[2]] = True
    spacing = np.asarray(spacing, dtype=float)
    far = 10.0 * float(np.sum(np.array(spots.size) * spacing))
    distance = ndimage.distance_transform_edt(~masks, sampling=(far, *spacing))
    shell = (distance > shell_mm[0]) & (distance <= shell_mm[1])
    boxes = extract_patches(np.asarray(image, dtype=np.float32), centres, spots.size, pad_value=np.nan)
    with np.errstate(invalid="ignore"):
        not_parenchyma = ~(boxes <= level) | (boxes == 0)  # NaN (beyond the image) counts as outside
    count = shell.reshape(n, -1).sum(axis=1)
    return (not_parenchyma & shell).reshape(n, -1).sum(axis=1) / np.maximum(count, 1)
