"""What differs between the three stages: patch size, sample kinds, targets, validation metrics.

Everything else (optimiser, schedule, checkpoints, logging, resume, DDP) is the one loop in ``loop.py``; mining
the screening false positives is ``mining.py``.

| stage | patch | samples | target | best checkpoint by |
|---|---|---|---|---|
| screening | ``screening.block_size`` | positives, random negatives, mined FPs | central 2x2x2 rule | F2 (sensitivity first) |
| discrimination | ``discrimination.block_size`` | positives, screening FPs | central 2x2x2 rule | F1 |
| segmentation | ``segmentation.patch_size`` | positives, screening FPs | the label patch | Dice |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn

from cmbunet.inference.candidates import find_candidates
from cmbunet.inference.screening import screening_score_map
from cmbunet.plans.schema import Plans
from cmbunet.training.augmentation import AugmentationParams, make_patches
from cmbunet.training.samples import CaseArrays, SampleBank
from cmbunet.utilities.autocast import ForwardOptions
from cmbunet.utilities.components import label_components
from cmbunet.utilities.patches import central_label, extract_patches


@dataclass(frozen=True)
class Stage:
    """Static description of one stage."""

    name: str
    classifier: bool  # one label per patch (True) or one per voxel (False)
    monitor: str  # validation metric selecting checkpoint_best (higher is better)
    requires: tuple[str, ...]  # stages whose final checkpoint must exist first
    mines: bool  # whether this stage mines its own false positives while training

    def patch_size(self, plans: Plans) -> tuple[int, int, int]:
        return tuple(int(s) for s in plans.stage(self.name).input_size)  # type: ignore[return-value]

    def targets(self, seg_patches: np.ndarray) -> np.ndarray:
        """Class per patch (central rule) for classifiers, the label patch for segmentation."""
        if self.classifier:
            return central_label(seg_patches).astype(np.int64)
        return (seg_patches > 0).astype(np.int64)


STAGES = {
    "screening": Stage("screening", True, "f2", (), True),
    "discrimination": Stage("discrimination", True, "f1", ("screening",), False),
    "segmentation": Stage("segmentation", False, "dice", ("screening",), False),
}


def batch_rng(seed: int, rank: int, epoch: int, index: int) -> np.random.Generator:
    """An RNG for one batch that depends only on its position, so resume and worker count change nothing."""
    return np.random.default_rng([int(seed), int(rank), int(epoch), int(index), 1])


def epoch_rng(seed: int, rank: int, epoch: int) -> np.random.Generator:
    """The RNG that draws one epoch's samples on one rank."""
    return np.random.default_rng([int(seed), int(rank), int(epoch), 0])


class EpochBatches(torch.utils.data.Dataset):
    """Batch ``i`` of an epoch: patches cut, augmented and labelled for ``rows[i*B:(i+1)*B]``.

    Indexed by batch, not by sample, so a data-loading worker builds a whole batch with vectorised calls.
    """

    def __init__(self, stage: Stage, plans: Plans, bank: SampleBank, rows: np.ndarray, batch_size: int,
                 augmentation: AugmentationParams | None, seed: int, rank: int, epoch: int):
        self.stage, self.bank, self.rows, self.batch_size = stage, bank, rows, int(batch_size)
        self.size = stage.patch_size(plans)
        self.augmentation, self.seed, self.rank, self.epoch = augmentation, seed, rank, epoch

    def __len__(self) -> int:
        return -(-len(self.rows) // self.batch_size)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rows = self.rows[index * self.batch_size:(index + 1) * self.batch_size]
        rng = batch_rng(self.seed, self.rank, self.epoch, index)
        data, seg = make_patches(self.bank, rows, self.size, self.augmentation, rng)
        return {"data": torch.from_numpy(np.ascontiguousarray(data)),
                "target": torch.from_numpy(self.stage.targets(seg)),
                "kind": torch.from_numpy(rows[:, 4].copy())}


# ----------------------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------------------
def rank_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula; ties count half. NaN for one class."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b > 0 else float("nan")


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, sensitivity, precision, F1, F2 and AUC of CMB probabilities against patch labels."""
    labels = np.asarray(labels).astype(bool)
    pred = np.asarray(probabilities) >= threshold
    tp, fp = int((pred & labels).sum()), int((pred & ~labels).sum())
    fn, tn = int((~pred & labels).sum()), int((~pred & ~labels).sum())
    return {
        "accuracy": _ratio(tp + tn, len(labels)),
        "sensitivity": _ratio(tp, tp + fn),
        "precision": _ratio(tp, tp + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "f2": _ratio(5 * tp, 5 * tp + 4 * fn + fp),
        "auc": rank_auc(probabilities, labels),
    }


def dice_metrics(intersection: float, predicted: float, reference: float) -> dict[str, float]:
    """Dice of the binarised CMB map pooled over all validation patches."""
    return {"dice": _ratio(2 * intersection, predicted + reference)}


# ----------------------------------------------------------------------------------------------------------
# whole-volume screening validation
# ----------------------------------------------------------------------------------------------------------
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
        "sensitivity": _ratio(sum(c["detected"] for c in per_case), total),
        "false_positives_per_case": _ratio(sum(c["false_positives"] for c in per_case), len(per_case)),
        "cases": per_case,
        "fp_rows": np.concatenate(fp_rows).astype(np.int64).reshape(-1, 4),
        "fp_scores": np.concatenate(fp_scores).astype(np.float32),
    }
