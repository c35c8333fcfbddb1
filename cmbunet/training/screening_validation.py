"""Whole-volume screening validation: candidate sensitivity and false positives per case of the screening FCN.

The false-positive candidates it finds on the validation volumes become the validation negatives of the
discrimination and segmentation stages.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn

from cmbunet.inference.candidates import find_candidates
from cmbunet.inference.screening import screening_score_map
from cmbunet.plans.schema import Plans
from cmbunet.training.metrics import ratio
from cmbunet.training.samples import CaseArrays, SampleBank
from cmbunet.utilities.autocast import ForwardOptions
from cmbunet.utilities.components import label_components
from cmbunet.utilities.patches import extract_patches


def screening_candidates(network: nn.Module, case: CaseArrays, plans: Plans, threshold: float,
                         device: str | torch.device = "cpu", precision: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    """Candidate centres and scores of the screening FCN on one whole volume."""
    scores = screening_score_map(network, np.asarray(case.data, dtype=np.float32), plans,
                                 ForwardOptions(device, precision))
    return find_candidates(scores, plans, threshold=threshold)


def candidate_hits(seg: np.ndarray, centres: np.ndarray, tolerance: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Which CMB components some candidate reaches, and which candidates reach none.

    A candidate reaches a component when a voxel of it lies in the candidate's central 2x2x2 block grown by
    ``tolerance`` voxels (the discrimination stage re-centres candidates by that many voxels). Returns
    (detected component ids, per-candidate false-positive flags, number of components).
    """
    labels, n = label_components(np.asarray(seg) > 0)
    if len(centres) == 0:
        return np.zeros(0, np.int64), np.zeros(0, bool), int(n)
    blocks = extract_patches(labels, centres, (2 + 2 * tolerance,) * 3).reshape(len(centres), -1)
    detected = np.unique(blocks[blocks > 0])
    return detected, ~(blocks > 0).any(axis=1), int(n)


def screening_validation(network: nn.Module, bank: SampleBank, plans: Plans, threshold: float,
                         device: str | torch.device = "cpu", tolerance: int | None = None, precision: str = "fp32",
                         candidates: Mapping[int, tuple[np.ndarray, np.ndarray]] | None = None) -> dict:
    """Candidate sensitivity and false positives per case of the screening FCN on whole volumes.

    Also returns the false-positive candidates as rows, which become the validation negatives of the
    discrimination and segmentation stages. ``candidates`` holds cases already screened with this network at a
    threshold no higher than ``threshold`` (by case index): those are filtered instead of screened again.
    """
    if tolerance is None:
        tolerance = int(plans.inference.discrimination_shift_vox)
    per_case, fp_rows, fp_scores = [], [], []
    for i, case in enumerate(bank.cases):
        if candidates is not None and i in candidates:
            centres, scores = candidates[i]
            centres, scores = centres[scores >= threshold], scores[scores >= threshold]
        else:
            centres, scores = screening_candidates(network, case, plans, threshold, device, precision)
        detected, is_fp, n = candidate_hits(case.seg, centres, tolerance)
        per_case.append({"case": case.name, "cmbs": n, "detected": int(len(detected)),
                         "candidates": int(len(centres)), "false_positives": int(is_fp.sum())})
        fp_rows.append(np.column_stack([np.full(int(is_fp.sum()), i), centres[is_fp]]))
        fp_scores.append(scores[is_fp])
    total = sum(c["cmbs"] for c in per_case)
    return {
        "threshold": float(threshold),
        "tolerance_vox": int(tolerance),
        "sensitivity": ratio(sum(c["detected"] for c in per_case), total),
        "false_positives_per_case": ratio(sum(c["false_positives"] for c in per_case), len(per_case)),
        "cases": per_case,
        "fp_rows": np.concatenate(fp_rows).astype(np.int64).reshape(-1, 4),
        "fp_scores": np.concatenate(fp_scores).astype(np.float32),
    }
