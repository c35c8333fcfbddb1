"""The shape of the dark spot under each candidate: a microbleed is a round blob, its mimics are not.

A microbleed's susceptibility blooming is close to a sphere whatever the scanner; the common mimics are tubes
(veins running over many slices), pancakes (flat partial-volume spots) or large dark regions of anatomy. Their
shape is a physical property that does not change from site to site, unlike the intensity cues the networks
learn, so it is measured directly: the connected dark region at half the spot's depth below its surroundings,
and the spread of that region along its principal axes in millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from cmbunet.plans.schema import InferenceSettings
from cmbunet.utilities.components import STRUCTURE_26
from cmbunet.utilities.patches import extract_patches

#: Half-width of the box the spot is measured in: a microbleed is at most 10 mm across.
SHAPE_RADIUS_MM = 7.0

#: Diameter (mm) of the round spot whose look on a scan's voxels scales the elongation limit: a small microbleed,
#: the kind thick slices stretch most (the 10th percentile of microbleeds' width at half depth on three held-out
#: sites was 2.9-3.2 mm; documentation/benchmarks.md, section 6d).
REFERENCE_SPOT_DIAMETER_MM = 3.0


@dataclass(frozen=True)
class SpotShape:
    """Per-candidate shape of the dark spot, each an ``(N,)`` array; NaN where no spot darker than its
    surroundings lies at the candidate."""

    elongation: np.ndarray  # sqrt(largest / smallest principal variance): 1 for a ball, large for tubes and discs
    diameter_mm: np.ndarray  # diameter of the ball of the same volume


def box_size(spacing: Sequence[float], radius_mm: float = SHAPE_RADIUS_MM) -> tuple[int, int, int]:
    """Odd box size in voxels reaching ``radius_mm`` from the centre along every axis."""
    return tuple(int(2 * np.ceil(radius_mm / float(s)) + 1) for s in spacing)


@dataclass(frozen=True)
class DarkSpots:
    """The dark spot under each of ``N`` centres, as boolean boxes ``(N, *size)`` centred on the centres."""

    masks: np.ndarray  # (N, X, Y, Z) bool; all False where no spot darker than its surroundings lies
    size: tuple[int, int, int]

    def voxels(self, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(spot index, volume voxel (3,))`` of every spot voxel: rows ``(K,)`` and ``(K, 3)``."""
        n, *xyz = np.nonzero(self.masks)
        corner = np.asarray(centres, dtype=np.int64).reshape(-1, 3) - np.array(self.size) // 2
        return n, corner[n] + np.stack(xyz, axis=1)


def dark_spots(image: np.ndarray, centres: np.ndarray, spacing: Sequence[float], depth_fraction: float = 0.5,
               radius_mm: float = SHAPE_RADIUS_MM) -> DarkSpots:
    """The dark spot at each centre of a 3D ``image``: the 26-connected region of voxels darker than
    ``background - depth_fraction * depth`` that holds the darkest voxel next to the centre, where ``background``
    is the median of a box reaching ``radius_mm`` and ``depth`` how far the darkest voxel lies below it. All
    centres at once: the boxes are stacked and labelled in one call with no connection between boxes."""
    centres = np.asarray(centres, dtype=np.int64).reshape(-1, 3)
    n = len(centres)
    size = box_size(np.asarray(spacing, dtype=float), radius_mm)
    if n == 0:
        return DarkSpots(np.zeros((0, *size), dtype=bool), size)
    boxes = extract_patches(np.asarray(image, dtype=np.float32), centres, size, pad_value=np.nan)
    mid = np.array(size) // 2
    core = boxes[:, mid[0] - 1: mid[0] + 2, mid[1] - 1: mid[1] + 2, mid[2] - 1: mid[2] + 2].reshape(n, -1)
    core = np.where(np.isnan(core), np.inf, core)
    darkest = core.argmin(axis=1)
    bottom = core[np.arange(n), darkest]
    background = np.nanmedian(boxes.reshape(n, -1), axis=1)
    depth = background - bottom
    valid = np.isfinite(bottom) & (depth > 0)
    cut = background - depth_fraction * np.where(valid, depth, 0.0)
    with np.errstate(invalid="ignore"):
        dark = (boxes < cut[:, None, None, None]) & valid[:, None, None, None]
    structure = np.zeros((3, 3, 3, 3), dtype=bool)
    structure[1] = STRUCTURE_26  # 26-connected within each box, never across boxes
    labels, _ = ndimage.label(dark, structure=structure)
    seed = np.stack(np.unravel_index(darkest, (3, 3, 3)), axis=1) + mid - 1
    seed_label = labels[np.arange(n), seed[:, 0], seed[:, 1], seed[:, 2]]
    spot = (labels == seed_label[:, None, None, None]) & (seed_label > 0)[:, None, None, None]
    return DarkSpots(spot, size)


def spot_shapes(image: np.ndarray, centres: np.ndarray, spacing: Sequence[float], depth_fraction: float = 0.5,
                radius_mm: float = SHAPE_RADIUS_MM) -> SpotShape:
    """Shape of the :func:`dark_spots` at each centre of a 3D ``image`` with voxel ``spacing`` (mm).

    Principal variances add a voxel's own extent (``spacing**2 / 12``) so that a spot one slice thick on a
    thick-slice scan is not taken for a flat disc.
    """
    return shapes_of_spots(dark_spots(image, centres, spacing, depth_fraction, radius_mm), spacing)


def _elongations(masks: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """sqrt(largest / smallest principal variance) of each boolean mask ``(N, *box)`` with voxels of ``spacing``
    (mm), each voxel's own extent (``spacing**2 / 12``) added; NaN for an empty mask."""
    n, size = len(masks), masks.shape[1:]
    mid = np.array(size) // 2
    axes = [(np.arange(s) - m) * d for s, m, d in zip(size, mid, spacing)]
    grids = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(size))  # (V, D) mm
    weights = masks.reshape(n, -1).astype(float)
    count = weights.sum(axis=1)
    safe = np.maximum(count, 1.0)
    mean = weights @ grids / safe[:, None]
    second = np.einsum("nv,vi,vj->nij", weights, grids, grids) / safe[:, None, None]
    cov = second - mean[:, :, None] * mean[:, None, :] + np.diag(spacing**2 / 12.0)[None]
    eig = np.linalg.eigvalsh(cov)  # ascending
    return np.where(count > 0, np.sqrt(eig[:, -1] / np.maximum(eig[:, 0], 1e-12)), np.nan)


def shapes_of_spots(spots: DarkSpots, spacing: Sequence[float]) -> SpotShape:
    """:func:`spot_shapes` of spots already found (each measured in its own box)."""
    n = len(spots.masks)
    if n == 0:
        return SpotShape(np.zeros(0), np.zeros(0))
    spacing = np.asarray(spacing, dtype=float)
    count = spots.masks.reshape(n, -1).sum(axis=1).astype(float)
    diameter = 2.0 * np.cbrt(3.0 * count * float(np.prod(spacing)) / (4.0 * np.pi))
    return SpotShape(_elongations(spots.masks, spacing), np.where(count > 0, diameter, np.nan))


def inplane_elongations(spots: DarkSpots, spacing: Sequence[float], slice_axis: int) -> np.ndarray:
    """In-plane elongation of each spot: :func:`spot_shapes`' measure in 2D, on the plane across ``slice_axis``
    that holds most of the spot (NaN where there is no spot).

    On thick slices a vein crossing one slice at a slant is a short streak within that slice, while a microbleed
    is a disc. The 3D elongation cannot tell them apart there: a small microbleed already looks stretched
    across slices, so its limit is loosened by :func:`round_spot_elongation`, and that loosening also lets a
    streak through within the slice. Measured within the slice, where voxels are fine, needs no loosening.
    """
    spacing = np.asarray(spacing, dtype=float)
    n = len(spots.masks)
    if n == 0:
        return np.zeros(0)
    masks = np.moveaxis(spots.masks, slice_axis + 1, 1)  # (N, slices, A, B)
    fullest = masks.reshape(n, masks.shape[1], -1).sum(axis=2).argmax(axis=1)
    return _elongations(masks[np.arange(n), fullest], np.delete(spacing, slice_axis))


def round_spot_elongation(spacing: Sequence[float], diameter_mm: float = REFERENCE_SPOT_DIAMETER_MM) -> float:
    """The elongation a round spot of ``diameter_mm`` shows when imaged with voxels of ``spacing`` (mm): 1 on
    isotropic voxels, more on thick slices, where a small microbleed fills a whole slice and so looks stretched
    across slices.

    Each axis' spread is the ball's own (``d**2 / 20``, a uniform ball) plus the voxel's (``s**2 / 12``), the way
    :func:`spot_shapes` measures. Scaling the elongation limit by it keeps a limit meant for what a microbleed can
    look like (round or ovoid) from dropping small microbleeds on 2.5-3.5 mm slices.
    """
    spread = float(diameter_mm) ** 2 / 20.0 + np.asarray(spacing, dtype=float) ** 2 / 12.0
    return float(np.sqrt(spread.max() / spread.min()))


def shape_keeps(elongation: np.ndarray, diameter_mm: np.ndarray, max_elongation: float | np.ndarray | None,
                max_diameter_mm: float | None) -> np.ndarray:
    """Which candidates the shape rule keeps (per-candidate arrays of :func:`spot_shapes`): a spot more elongated
    than ``max_elongation`` (a number, or one per candidate) or wider than ``max_diameter_mm`` is dropped; ``None``
    sets no limit, and a spot that cannot be measured (NaN) is kept, so the rule only ever removes what is clearly
    not a ball of microbleed size."""
    keep = np.ones(len(elongation), dtype=bool)
    with np.errstate(invalid="ignore"):
        if max_elongation is not None:
            keep &= ~(np.asarray(elongation) > np.asarray(max_elongation, dtype=float))
        if max_diameter_mm is not None:
            keep &= ~(np.asarray(diameter_mm) > float(max_diameter_mm))
    return keep


#: Channel names (case-insensitive substrings) of the susceptibility-weighted scans in which a CMB is a dark spot.
SUSCEPTIBILITY_NAMES = ("t2s", "t2*", "t2star", "swi", "gre", "susc", "qsm")


def susceptibility_channel(channel_names: dict[str, str]) -> int:
    """Index of the first channel named like a susceptibility-weighted scan (T2*, SWI, GRE), else 0: the shape is
    measured where a microbleed is dark, which in a VALDO layout (T1, T2, T2*) is not the first channel."""
    for key in sorted(channel_names, key=int):
        name = str(channel_names[key]).lower().replace("-", "").replace("_", "")
        if any(tag in name for tag in SUSCEPTIBILITY_NAMES):
            return int(key)
    return 0


#: Decision score of a candidate the shape rule drops (below every threshold) and of a round spot it keeps
#: whatever the discrimination threshold (above every threshold).
DROPPED, ROUND = -1.0, 2.0


def decision_scores(discrimination: np.ndarray, elongation: np.ndarray, diameter_mm: np.ndarray,
                    settings: InferenceSettings, elongation_scale: float | np.ndarray = 1.0,
                    csf_share: np.ndarray | None = None, blob_ratio: np.ndarray | None = None,
                    inplane_elongation: np.ndarray | None = None) -> np.ndarray:
    """What the discrimination threshold is compared with once the spot's shape is known.

    A spot the shape rule drops (more than ``shape_max_elongation`` x ``elongation_scale`` times longer than
    wide, or wider than ``shape_max_diameter_mm``) gets :data:`DROPPED`; ``elongation_scale`` is the scan's
    :func:`round_spot_elongation` (one number, or one per candidate). A round spot of microbleed size
    (elongation at most ``shape_round_elongation``, diameter within ``shape_max_diameter_mm``) with a probability
    above ``shape_round_threshold`` gets :data:`ROUND`: discrimination, trained at even odds, need only favour
    it, because the prior that made the threshold strict (many screening false positives per microbleed) is not
    the prior of round dark spots. Every other candidate keeps its probability. NaN shapes (not measured, or no
    dark spot) are never round and never dropped.

    Three measures then drop a spot, round or not, each when given and its setting is on:
    ``csf_share`` (:func:`~cmbunet.inference.location.csf_shares`) above ``location_max_csf_share``, because
    where a spot lies outweighs its look; ``blob_ratio`` (:func:`~cmbunet.inference.blob.relative_blob_ratios`)
    below ``shape_min_blob_ratio``, because a tube seen end-on can look round in its half-depth region; and
    ``inplane_elongation`` (:func:`inplane_elongations`) above ``shape_max_inplane_elongation``, because a vein
    crossing a thick slice is a streak within it.
    """
    p = np.asarray(discrimination, dtype=float)
    e, d = np.asarray(elongation, dtype=float), np.asarray(diameter_mm, dtype=float)
    max_e = settings.shape_max_elongation
    if max_e is not None:
        max_e = float(max_e) * np.asarray(elongation_scale, dtype=float)
    score = np.where(shape_keeps(e, d, max_e, settings.shape_max_diameter_mm), p, DROPPED)
    if settings.shape_round_elongation is not None:
        with np.errstate(invalid="ignore"):
            round_ = (e <= settings.shape_round_elongation) & (p > settings.shape_round_threshold)
            if settings.shape_max_diameter_mm is not None:
                round_ &= d <= settings.shape_max_diameter_mm
        score = np.where(round_, ROUND, score)
    vetoes = ((csf_share, settings.location_max_csf_share, 1.0), (blob_ratio, settings.shape_min_blob_ratio, -1.0),
              (inplane_elongation, settings.shape_max_inplane_elongation, 1.0))
    for values, limit, sign in vetoes:  # sign 1: a maximum, -1: a minimum; NaN is never dropped
        if values is not None and limit is not None:
            with np.errstate(invalid="ignore"):
                score = np.where(sign * np.asarray(values, dtype=float) > sign * float(limit), DROPPED, score)
    return score


def measured_threshold(settings: InferenceSettings) -> float:
    """Candidates above this probability can be kept, so only they need their spot measured."""
    if settings.shape_round_elongation is None:
        return float(settings.discrimination_threshold)
    return float(min(settings.discrimination_threshold, settings.shape_round_threshold))
