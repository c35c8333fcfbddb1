"""The report's ``index.html``: one self-contained page over all cases, readable offline.

Only relative links and inline CSS are used, so the report folder can be copied, zipped or opened from a
network share without anything to download.
"""

from __future__ import annotations

import datetime
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import quote

from cmbunet.utilities.file_io import save_text

#: summary.json aggregates shown on the page: (key, label, format)
EVALUATION_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("num_cases", "cases", "d"),
    ("num_cases_with_cmb", "cases with CMBs", "d"),
    ("f1_mean", "F1 (mean over cases with CMBs)", ".3f"),
    ("f1_median", "F1 (median)", ".3f"),
    ("f1_pooled", "F1 (pooled over all CMBs)", ".3f"),
    ("sensitivity", "sensitivity", ".3f"),
    ("precision", "precision", ".3f"),
    ("fp_per_case", "false positives per case", ".2f"),
    ("dice_mean", "Dice (mean)", ".3f"),
    ("dice_median", "Dice (median)", ".3f"),
    ("count_diff_median", "count difference (median)", ".2f"),
    ("vol_diff_median", "volume difference (median)", ".2f"),
    ("tp", "true positives", "d"),
    ("fp", "false positives", "d"),
    ("fn", "false negatives", "d"),
    ("num_missing_predictions", "missing predictions", "d"),
)

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 1.5em 2em;
       color: #1d1d1f; background: #fafafa; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
.meta { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; background: white; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; font-size: 0.92em; }
th { background: #eee; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.problem td { background: #fff4e5; }
.problems { color: #b3261e; margin: 0; padding-left: 1.1em; }
.status-failed { color: #b3261e; font-weight: bold; }
img.thumb { width: 240px; display: block; border: 1px solid #999; background: black; }
figure { display: inline-block; margin: 0 1em 1em 0; vertical-align: top; }
figure img { max-width: 560px; border: 1px solid #ccc; background: white; }
figcaption { font-size: 0.85em; color: #555; max-width: 560px; word-break: break-all; }
"""


@dataclass
class CaseEntry:
    """One row of the index: what was found for a case and where its sheets are (paths relative to the page)."""

    case: str
    num_cmbs: int | None = None
    total_volume_mm3: float | None = None
    status: str = ""
    error: str = ""
    seconds: float | None = None
    sheets: list[str] = field(default_factory=list)
    thumbnail: str | None = None
    problems: list[str] = field(default_factory=list)


def href(relative: str) -> str:
    """URL-quote a relative path (case names may hold spaces or ``#``) and escape it for an attribute."""
    return html.escape(quote(relative.replace("\\", "/")), quote=True)


def _number(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    try:
        return format(int(value) if fmt == "d" else float(value), fmt)
    except (TypeError, ValueError):
        return html.escape(str(value))


def case_row(entry: CaseEntry) -> str:
    """``<tr>`` of one case: thumbnail linking to sheet 1, counts, status, links to every sheet, problems."""
    esc = html.escape
    thumb = (f'<a href="{href(entry.sheets[0])}"><img class="thumb" src="{href(entry.thumbnail)}" '
             f'alt="overview of {esc(entry.case)}"></a>') if entry.thumbnail and entry.sheets else ""
    links = " ".join(f'<a href="{href(s)}">sheet&nbsp;{n + 1}</a>' for n, s in enumerate(entry.sheets)) or "no sheet"
    status_class = ' class="status-failed"' if entry.status.startswith("failed") else ""
    status = f"<span{status_class}>{esc(entry.status or '–')}</span>"
    if entry.error:
        status += f"<br><small>{esc(entry.error)}</small>"
    problems = ("<ul class=\"problems\">" + "".join(f"<li>{esc(p)}</li>" for p in entry.problems) + "</ul>") if entry.problems else ""
    cls = ' class="problem"' if entry.problems or entry.status.startswith("failed") else ""
    return (f'<tr{cls} id="case-{esc(entry.case, quote=True)}"><td>{esc(entry.case)}</td>'
            f'<td class="num cmb-count">{_number(entry.num_cmbs, "d")}</td>'
            f'<td class="num">{_number(entry.total_volume_mm3, ".1f")}</td>'
            f'<td>{status}</td><td class="num">{_number(entry.seconds, ".1f")}</td>'
            f"<td>{thumb}{links}</td><td>{problems}</td></tr>")


def evaluation_section(aggregate: Mapping[str, Any] | None, images: Sequence[str], note: str | None) -> str:
    """Evaluation aggregates (from ``summary.json``) and plots (FROC, ...), or nothing when there are none."""
    if aggregate is None and not images and not note:
        return ""
    parts = ["<h2>Evaluation against the reference</h2>"]
    if note:
        parts.append(f'<p class="problems">{html.escape(note)}</p>')
    if aggregate:
        rows = "".join(f"<tr><th>{html.escape(label)}</th><td class=\"num\">{_number(aggregate.get(key), fmt)}</td></tr>"
                       for key, label, fmt in EVALUATION_FIELDS if key in aggregate)
        parts.append(f'<table class="evaluation">{rows}</table>')
    parts.append(_figures(images))
    return "\n".join(parts)


def _figures(images: Sequence[str]) -> str:
    return "".join(f'<figure><a href="{href(p)}"><img src="{href(p)}" alt="{html.escape(p)}"></a>'
                   f"<figcaption>{html.escape(p)}</figcaption></figure>" for p in images)


def render_index(entries: Sequence[CaseEntry], sources: Mapping[str, str], evaluation: Mapping[str, Any] | None = None,
                 evaluation_images: Sequence[str] = (), evaluation_note: str | None = None,
                 extras: Sequence[str] = ()) -> str:
    """The whole page as a string (all text escaped, all links relative)."""
    esc = html.escape
    total = sum(e.num_cmbs or 0 for e in entries)
    flagged = sum(1 for e in entries if e.problems or e.status.startswith("failed"))
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    source_lines = "".join(f"<li>{esc(k)}: <code>{esc(v)}</code></li>" for k, v in sources.items())
    rows = "\n".join(case_row(e) for e in entries)
    extra = f"<h2>Training and other figures</h2>{_figures(extras)}" if extras else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cmbunet report</title>
<style>{CSS}</style></head>
<body>
<h1>Cerebral microbleed detection report</h1>
<p class="meta">generated {esc(when)} &middot; <span id="num-cases">{len(entries)}</span> cases &middot;
<span id="total-cmbs">{total}</span> CMBs detected &middot; {flagged} case(s) need attention</p>
<ul class="meta">{source_lines}</ul>
<p class="meta">Sheets: axial panels show voxel x to the right and voxel y downwards, coronal and sagittal panels
voxel z upwards; the blue letters give the nearest anatomical direction of each edge. Red lines outline the
predicted segmentation voxel by voxel, yellow circles mark detected CMBs on the overview.</p>
<h2>Cases</h2>
<table class="cases">
<thead><tr><th>case</th><th>CMBs</th><th>total volume (mm³)</th><th>status</th><th>runtime (s)</th>
<th>sheets</th><th>problems</th></tr></thead>
<tbody>
{rows}
</tbody></table>
{evaluation_section(evaluation, evaluation_images, evaluation_note)}
{extra}
</body></html>
"""


def write_index(path: str | Path, entries: Sequence[CaseEntry], sources: Mapping[str, str], **sections: Any) -> Path:
    """Write ``index.html`` atomically (see :func:`render_index` for the sections)."""
    path = Path(path)
    save_text(render_index(entries, sources, **sections), path)
    return path
