"""Validation metrics: accuracy, sensitivity, precision, F1, F2 and AUC of patch classifiers; pooled Dice of the
segmentation U-Net."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def rank_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula; ties count half. NaN for one class."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def ratio(a: float, b: float) -> float:
    """``a / b``; NaN when ``b`` is 0."""
    return float(a / b) if b > 0 else float("nan")


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, sensitivity, precision, F1, F2 and AUC of CMB probabilities against patch labels."""
    labels = np.asarray(labels).astype(bool)
    pred = np.asarray(probabilities) >= threshold
    tp, fp = int((pred & labels).sum()), int((pred & ~labels).sum())
    fn, tn = int((~pred & labels).sum()), int((~pred & ~labels).sum())
    return {
        "accuracy": ratio(tp + tn, len(labels)),
        "sensitivity": ratio(tp, tp + fn),
        "precision": ratio(tp, tp + fp),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "f2": ratio(5 * tp, 5 * tp + 4 * fn + fp),
        "auc": rank_auc(probabilities, labels),
    }


def dice_metrics(intersection: float, predicted: float, reference: float) -> dict[str, float]:
    """Dice of the binarised CMB map pooled over all validation patches."""
    return {"dice": ratio(2 * intersection, predicted + reference)}
