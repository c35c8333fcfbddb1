"""Command-line options shared by the commands that link predicted CMBs to reference CMBs."""

from __future__ import annotations

import argparse

from cmbunet.errors import CMBUNetError
from cmbunet.evaluation.valdo_metrics import DEFAULT_DIST_MM


def add_dist_option(parser: argparse.ArgumentParser, help: str) -> None:
    """``--dist MM`` (into ``dist``): one default linking distance for evaluation, thresholds and the report."""
    parser.add_argument("--dist", type=float, default=DEFAULT_DIST_MM, help=help)


def require_positive_dist(dist: float) -> None:
    """Refuse a linking distance of 0 or less before any work: it would link no CMB at all."""
    if dist <= 0:
        raise CMBUNetError(f"--dist must be positive, got {dist}")
