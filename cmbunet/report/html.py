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

from cmbunet.report.panels import legend_entries
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
.legend ul { list-style: none; padding: 0; margin: 0.3em 0; display: flex; flex-wrap: wrap; gap: 0.4em 1.4em; }
.legend li { font-size: 0.9em; display: flex; align-items: center; }
.swatch { display: inline-block; width: 14px; height: 14px; margin-right: 0.4em; background: #333; }
.swatch.line { height: 0; border-top: 3px solid; background: none; width: 22px; }
.swatch.circle { border: 2px solid; border-radius: 50%; width: 12px; height: 12px; }
td.case-problems { max-width: 24em; overflow-wrap: anywhere; }
td.missed { color: #b3261e; font-weight: bold; }
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
    #: ``cmbunet_evaluate``'s per-case metrics (tp, fp, fn, f1, n_ref, ...) when compared with a reference
    metrics: dict[str, Any] | None = None
    missed_sheets: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        return bool(self.problems) or self.status.startswith("failed")


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


def _metric(entry: CaseEntry, key: str) -> Any:
    return None if entry.metrics is None else entry.metrics.get(key)


def _data_number(value: Any) -> str:
    """A metric for a ``data-`` attribute: full precision, empty when undefined."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return format(value, ".6g") if isinstance(value, float) else str(value)


def worst_first_key(entry: CaseEntry) -> tuple:
    """Sort key putting the worst case first: lowest F1 first (a case without reference CMBs, whose F1 is
    undefined, counts as F1 0 when it has false positives and 1 otherwise), then most errors (FP + FN);
    cases not compared with a reference come last."""
    m = entry.metrics
    if m is None:
        return (1, 0.0, 0, entry.case)
    f1, errors = m.get("f1"), int(m.get("fp", 0)) + int(m.get("fn", 0))
    score = float(f1) if f1 is not None and math.isfinite(float(f1)) else (0.0 if m.get("fp") else 1.0)
    return (0, score, -errors, entry.case)


def case_row(entry: CaseEntry, compared: bool = False) -> str:
    """``<tr>`` of one case: thumbnail linking to sheet 1, counts (and TP/FP/FN/F1 against the reference),
    status, links to every sheet and to the sheets of missed CMBs, problems."""
    esc = html.escape
    thumb = (f'<a href="{href(entry.sheets[0])}"><img class="thumb" src="{href(entry.thumbnail)}" '
             f'alt="overview of {esc(entry.case)}"></a>') if entry.thumbnail and entry.sheets else ""
    links = [f'<a class="sheet" href="{href(s)}">sheet&nbsp;{n + 1}</a>' for n, s in enumerate(entry.sheets)]
    links += [f'<a class="missed-sheet" href="{href(s)}">missed&nbsp;CMBs&nbsp;{n + 1}</a>'
              for n, s in enumerate(entry.missed_sheets)]
    status_class = ' class="status-failed"' if entry.status.startswith("failed") else ""
    status = f"<span{status_class}>{esc(entry.status or '–')}</span>"
    if entry.error:
        status += f"<br><small>{esc(entry.error)}</small>"
    problems = ("<ul class=\"problems\">" + "".join(f"<li>{esc(p)}</li>" for p in entry.problems) + "</ul>") if entry.problems else ""
    cls = ' class="problem"' if entry.flagged else ""
    data = ""
    scores = ""
    if compared:
        data = "".join(f' data-{k.replace("_", "-")}="{_data_number(_metric(entry, k))}"'
                       for k in ("tp", "fp", "fn", "f1", "n_ref"))
        fn = _metric(entry, "fn")
        scores = (f'<td class="num n-ref">{_number(_metric(entry, "n_ref"), "d")}</td>'
                  f'<td class="num tp">{_number(_metric(entry, "tp"), "d")}</td>'
                  f'<td class="num fp">{_number(_metric(entry, "fp"), "d")}</td>'
                  f'<td class="num fn{" missed" if fn else ""}">{_number(fn, "d")}</td>'
                  f'<td class="num f1">{_number(_metric(entry, "f1"), ".3f")}</td>')
    return (f'<tr{cls}{data} id="case-{esc(entry.case, quote=True)}"><td>{esc(entry.case)}</td>'
            f'<td class="num cmb-count">{_number(entry.num_cmbs, "d")}</td>{scores}'
            f'<td class="num">{_number(entry.total_volume_mm3, ".1f")}</td>'
            f'<td>{status}</td><td class="num">{_number(entry.seconds, ".1f")}</td>'
            f'<td class="case-sheets">{thumb}{" ".join(links) or "no sheet"}</td><td class="case-problems">{problems}</td></tr>')


def legend(compared: bool) -> str:
    """The colours of the sheets: outlines as lines, markers as circles."""
    items = []
    for kind, color, text in legend_entries(compared):
        items.append(f'<li><span class="swatch {kind}" style="border-color:{color}"></span>{html.escape(text)}</li>')
    return f'<div class="legend" id="legend"><b>Legend</b><ul>{"".join(items)}</ul></div>'


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
                 extras: Sequence[str] = (), compared: bool = False) -> str:
    """The whole page as a string (all text escaped, all links relative). With ``compared`` (detections
    matched against a reference) the cases are listed worst first with their TP, FP, FN and F1."""
    esc = html.escape
    total = sum(e.num_cmbs or 0 for e in entries)
    flagged = sum(1 for e in entries if e.flagged)
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    source_lines = "".join(f"<li>{esc(k)}: <code>{esc(v)}</code></li>" for k, v in sources.items())
    ordered = sorted(entries, key=worst_first_key) if compared else list(entries)
    rows = "\n".join(case_row(e, compared) for e in ordered)
    extra = f"<h2>Training and other figures</h2>{_figures(extras)}" if extras else ""
    score_heads = ("<th>reference CMBs</th><th>TP</th><th>FP</th><th>FN (missed)</th><th>F1</th>" if compared else "")
    missed = sum(int(e.metrics.get("fn", 0)) for e in entries if e.metrics)
    counts = f' &middot; <span id="total-missed">{missed}</span> reference CMBs missed' if compared else ""
    order = ("<p class=\"meta\">Cases are sorted worst first: lowest F1 first (a case without reference CMBs "
             "counts as F1 0 when it has false positives), then most false positives plus false negatives; "
             "cases without a reference come last.</p>" if compared else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cmbunet report</title>
<style>{CSS}</style></head>
<body>
<h1>Cerebral microbleed detection report</h1>
<p class="meta">generated {esc(when)} &middot; <span id="num-cases">{len(entries)}</span> cases &middot;
<span id="total-cmbs">{total}</span> CMBs detected{counts} &middot; {flagged} case(s) need attention</p>
<ul class="meta">{source_lines}</ul>
<p class="meta">Sheets: axial panels show voxel x to the right and voxel y downwards, coronal and sagittal panels
voxel z upwards; the blue letters give the nearest anatomical direction of each edge.</p>
{legend(compared)}
<h2>Cases</h2>
{order}
<table class="cases">
<thead><tr><th>case</th><th>CMBs detected</th>{score_heads}<th>total volume (mm³)</th><th>status</th>
<th>runtime (s)</th><th>sheets</th><th>problems</th></tr></thead>
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
