"""Prediction: screening score map, candidates, discrimination, segmentation, export to native geometry.

``CMBPredictor`` (in :mod:`cmbunet.inference.predictor`) runs the whole chain; ``cmbunet_predict`` is its
command line. The predictor is imported lazily so that importing a light submodule does not load torch models.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CMBPredictor", "find_input_cases"]


def __getattr__(name: str) -> Any:
    if name == "CMBPredictor":
        from cmbunet.inference.predictor import CMBPredictor

        return CMBPredictor
    if name == "find_input_cases":
        from cmbunet.inference.input_cases import find_input_cases

        return find_input_cases
    raise AttributeError(name)
