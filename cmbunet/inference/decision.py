"""The decision on each screening candidate: its discrimination probability, then what is measured of the dark
spot under it (its shape, :mod:`cmbunet.inference.shape`, and where it lies, :mod:`cmbunet.inference.location`).

One function measures, one decides, so that prediction, the benchmarks and the tests that replay prediction's
decision on their own candidates take the same one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from cmbunet.inference.blob import relative_blob_ratios
from cmbunet.inference.location import csf_level, csf_shares
from cmbunet.inference.shape import (dark_spots, decision_scores, inplane_elongations, measured_threshold,
                                     round_spot_elongation, shapes_of_spots, susceptibility_channel)
from cmbunet.plans.schema import InferenceSettings


@dataclass(frozen=True)
class SpotMeasures:
    """Per-candidate measures ``(N,)`` (NaN where not measured: only candidates that can be kept are, and the CSF
    share, curvature and in-plane elongation only when their rule is on) and the scan's
    :func:`~cmbunet.inference.shape.round_spot_elongation`. The in-plane elongation is measured on the slices of
    the scan as acquired: the preprocessed axis of its largest original spacing is the slice axis."""

    elongation: np.ndarray
    diameter_mm: np.ndarray
    csf_share: np.ndarray
    elongation_scale: float
    blob_ratio: np.ndarray  # relative_blob_ratios, NaN when the curvature rule is off
    inplane_elongation: np.ndarray  # inplane_elongations, NaN when the in-plane rule is off


def measure_candidates(data: np.ndarray, centres: np.ndarray, probabilities: np.ndarray,
                       settings: InferenceSettings, channel_names: Mapping[str, str], spacing: Sequence[float],
                       original_spacing: Sequence[float]) -> SpotMeasures:
    """Measure the dark spot under each candidate of a preprocessed case ``(C, X, Y, Z)`` whose probability could
    keep it, in the susceptibility-weighted channel: shape always, location, curvature and in-plane elongation
    when the settings use them (finding the scan's CSF level reads every brain voxel once)."""
    n = len(centres)
    elongation, diameter, share, blob, inplane = (np.full(n, np.nan) for _ in range(5))
    above = np.asarray(probabilities) > measured_threshold(settings)
    if above.any():
        image = data[susceptibility_channel(dict(channel_names))]
        at = np.asarray(centres)[above]
        spots = dark_spots(image, at, spacing)
        shapes = shapes_of_spots(spots, spacing)
        elongation[above], diameter[above] = shapes.elongation, shapes.diameter_mm
        if settings.location_max_csf_share is not None:
            share[above] = csf_shares(image, spots, at, spacing, csf_level(image))
        if settings.shape_min_blob_ratio is not None:
            blob[above] = relative_blob_ratios(image, at, spacing, original_spacing)
        if settings.shape_max_inplane_elongation is not None:
            inplane[above] = inplane_elongations(spots, spacing, int(np.argmax(original_spacing)))
    return SpotMeasures(elongation, diameter, share, round_spot_elongation(original_spacing), blob, inplane)


def kept_candidates(probabilities: np.ndarray, measures: SpotMeasures, settings: InferenceSettings) -> np.ndarray:
    """Which candidates are kept: the discrimination threshold on the scores of
    :func:`~cmbunet.inference.shape.decision_scores` (shape, curvature, in-plane elongation and location
    rules applied)."""
    scores = decision_scores(probabilities, measures.elongation, measures.diameter_mm, settings,
                             measures.elongation_scale, measures.csf_share, measures.blob_ratio,
                             measures.inplane_elongation)
    return scores > float(settings.discrimination_threshold)
