"""Evaluation with the official VALDO 2021 task-2 metrics (``cmbunet_evaluate``)."""

from cmbunet.evaluation.evaluate import aggregate_metrics, evaluate_folders, write_evaluation
from cmbunet.evaluation.valdo_metrics import case_metrics

__all__ = ["case_metrics", "evaluate_folders", "write_evaluation", "aggregate_metrics"]
