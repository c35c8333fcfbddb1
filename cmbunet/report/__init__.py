"""Visual quality-control report of a prediction folder: per-case PNG sheets and an offline ``index.html``.

``write_report(pred_dir, image_input, report_dir, reference=None)`` is what ``cmbunet_report`` runs (with
``reference``, detections are scored against the labels and misses shown); see ``documentation/report.md``
for how to read the sheets.
"""

from __future__ import annotations

from typing import Any

__all__ = ["write_report"]


def __getattr__(name: str) -> Any:
    # imported lazily: importing cmbunet.report should not load matplotlib for callers that never report
    if name == "write_report":
        from cmbunet.report.cli import write_report

        return write_report
    raise AttributeError(name)
