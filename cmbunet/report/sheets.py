"""Per-case quality-control sheets: an axial overview mosaic and one row of close-up crops per detected CMB,
plus, against a reference, sheets with one row per missed reference CMB.

The data a sheet draws is described in :mod:`cmbunet.report.volumes`, the panels and their orientation and
colours in :mod:`cmbunet.report.panels`; this module lays the panels out on PNG pages and writes them.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from cmbunet.report.panels import add_legend, draw_cmb_row, draw_overview, foreground_box
from cmbunet.report.volumes import CaseVolumes, case_window
from cmbunet.utilities.file_io import atomic_path

FIG_WIDTH_IN = 12.0
DPI = 100
#: Height (inches) of one row of four crops, its title included.
ROW_HEIGHT_IN = FIG_WIDTH_IN / 4 + 0.55
#: Height (inches) of the legend line on the first sheet.
LEGEND_HEIGHT_IN = 0.35
DETECTION_SHEET = "sheet"
MISSED_SHEET = "missed"


def num_sheets(num_cmbs: int, max_per_sheet: int) -> int:
    """Sheets needed for a case: the first one always exists (it carries the overview)."""
    return max(1, math.ceil(num_cmbs / max_per_sheet))


def _save(fig: Figure, path: Path, dpi: int) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, facecolor=fig.get_facecolor())


def _remove_stale(out_dir: Path, case: str, kind: str, keep: int) -> None:
    """Delete ``CASE_<kind>N.png`` with N > keep, left over from an earlier run with more CMBs."""
    prefix = f"{case}_{kind}"
    for stale in out_dir.glob(f"{prefix}*.png"):
        suffix = stale.name[len(prefix):-len(".png")]
        if suffix.isdigit() and int(suffix) > keep:
            stale.unlink()


def _overview_height(vol: CaseVolumes, num_slices: int, width: float = FIG_WIDTH_IN) -> tuple[float, int]:
    """Height (inches) of the overview mosaic at ``width`` and its number of rows of four panels."""
    box = foreground_box(vol.image, vol.mask if vol.reference is None else vol.mask | vol.reference)
    spacing = vol.geometry["spacing"]
    aspect = ((box[1][1] - box[1][0] + 1) * spacing[1]) / ((box[0][1] - box[0][0] + 1) * spacing[0])
    rows = math.ceil(min(num_slices, box[2][1] - box[2][0] + 1) / 4)
    return rows * (width / 4) * aspect, rows


def _page(heights: list[float], header: float, title: str) -> tuple[Figure, list]:
    """A white page: a header band of ``header`` inches with ``title``, then one subfigure per height."""
    total = sum(heights) + header
    fig = Figure(figsize=(FIG_WIDTH_IN, total), facecolor="white")
    fig.suptitle(title, fontsize=11, fontweight="bold", y=1 - 0.1 / total, va="top")
    grid = fig.add_gridspec(len(heights) + 1, 1, height_ratios=[header, *heights], hspace=0,
                            left=0, right=1, top=1, bottom=0)
    return fig, [fig.add_subfigure(grid[n + 1, 0]) for n in range(len(heights))]


def _draw_rows(subs: list, vol: CaseVolumes, rows: pd.DataFrame, window: tuple[float, float], missed: bool) -> None:
    for n, (sub, (_, row)) in enumerate(zip(subs, rows.iterrows())):
        draw_cmb_row(sub, vol, row, window, with_letters=(n == 0), missed=missed)
        sub.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=1 - 0.5 / ROW_HEIGHT_IN, wspace=0.05)


def _count_text(vol: CaseVolumes) -> str:
    n = len(vol.cmbs)
    text = f"{n} CMB{'s' if n != 1 else ''} detected"
    if vol.compared:
        outcome = vol.cmbs["outcome"] if "outcome" in vol.cmbs else pd.Series(dtype=str)
        tp, fp, fn = int((outcome == "TP").sum()), int((outcome == "FP").sum()), len(vol.missed_rows)
        text += f" (TP {tp}, FP {fp}), {fn} missed"
    return text


def render_sheets(vol: CaseVolumes, out_dir: str | Path, max_per_sheet: int = 8, num_slices: int = 16) -> list[Path]:
    """Write ``CASE_sheetN.png`` (sheet 1: legend and overview mosaic, then up to ``max_per_sheet`` rows of
    detected CMBs) and return their paths; sheets left over from an earlier run with more CMBs are removed."""
    out_dir = Path(out_dir)
    window = case_window(vol)
    ov_height, ov_rows = _overview_height(vol, num_slices)
    ov_height += 0.4 * ov_rows + 0.6
    total = num_sheets(len(vol.cmbs), max_per_sheet)
    paths = []
    for sheet in range(total):
        rows = vol.cmbs.iloc[sheet * max_per_sheet:(sheet + 1) * max_per_sheet]
        first = sheet == 0
        heights = ([ov_height] if first else []) + [ROW_HEIGHT_IN] * len(rows)
        subtitle = []
        if vol.image is None and first:
            subtitle.append("no T2* image available: the prediction mask is shown on a black background")
        if first and not len(rows):
            subtitle.append("no CMB detected in this case")
        header = 0.6 + 0.35 * len(subtitle) + (LEGEND_HEIGHT_IN if first else 0.0)
        title = f"{vol.case}: {_count_text(vol)}   (sheet {sheet + 1} of {total})"
        fig, subs = _page(heights, header, "\n".join([title, *subtitle]))
        if first:
            add_legend(fig, vol.compared, 1 - (header - LEGEND_HEIGHT_IN / 2 - 0.05) / (sum(heights) + header))
            draw_overview(subs[0], vol, window, num_slices)
            subs[0].subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.6 / ov_height, wspace=0.04, hspace=0.12)
        _draw_rows(subs[1 if first else 0:], vol, rows, window, missed=False)
        path = out_dir / f"{vol.case}_{DETECTION_SHEET}{sheet + 1}.png"
        _save(fig, path, DPI)
        paths.append(path)
    _remove_stale(out_dir, vol.case, DETECTION_SHEET, total)
    return paths


def render_missed_sheets(vol: CaseVolumes, out_dir: str | Path, max_per_sheet: int = 8) -> list[Path]:
    """Write ``CASE_missedN.png``: one row of crops per missed reference CMB (false negative), centred on
    the reference CMB, ``max_per_sheet`` rows a page. None without a reference or without a miss."""
    out_dir = Path(out_dir)
    missed = vol.missed_rows
    total = math.ceil(len(missed) / max_per_sheet)
    paths = []
    window = case_window(vol) if total else (0.0, 1.0)
    for sheet in range(total):
        rows = missed.iloc[sheet * max_per_sheet:(sheet + 1) * max_per_sheet]
        title = (f"{vol.case}: {len(missed)} missed reference CMB{'s' if len(missed) != 1 else ''} (false negatives)"
                 f"   (page {sheet + 1} of {total})")
        fig, subs = _page([ROW_HEIGHT_IN] * len(rows), 0.6, title)
        _draw_rows(subs, vol, rows, window, missed=True)
        path = out_dir / f"{vol.case}_{MISSED_SHEET}{sheet + 1}.png"
        _save(fig, path, DPI)
        paths.append(path)
    _remove_stale(out_dir, vol.case, MISSED_SHEET, total)
    return paths


def render_thumbnail(vol: CaseVolumes, path: str | Path, num_slices: int = 8) -> Path:
    """A small overview mosaic (no labels) for the index page."""
    height, _ = _overview_height(vol, num_slices, width=3.2)
    fig = Figure(figsize=(3.2, max(0.4, height)), facecolor="black")
    draw_overview(fig, vol, case_window(vol), num_slices, ncols=4, compact=True)
    fig.subplots_adjust(left=0, right=1, top=1, bottom=0, wspace=0.02, hspace=0.02)
    path = Path(path)
    _save(fig, path, 80)
    return path
