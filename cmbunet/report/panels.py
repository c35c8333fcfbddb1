"""The panels of a report sheet: the axial overview mosaic and the row of close-up crops around one CMB.

Everything is drawn in voxel-index space, so the picture is the stored data without any resampling: every
panel is placed on millimetre axes built from the voxel spacing, which keeps the physical aspect ratio of
anisotropic scans, and pixels are drawn nearest-neighbour so single voxels stay visible. The orientation is
the same for every case:

* axial: voxel x to the right, voxel y downwards (slice index z);
* coronal: voxel x to the right, voxel z upwards (slice index y);
* sagittal: voxel y to the right, voxel z upwards (slice index x).

The nearest anatomical direction of each edge (L/R, A/P, S/I, from the direction cosines) is printed on
the panels, because voxel axes of oblique or flipped scans need not match the anatomical ones.

Colours: the predicted segmentation is outlined in red, the reference (when given) in cyan; detections are
circled in yellow, or, against a reference, green (true positive) and orange (false positive), and missed
reference CMBs (false negatives) in magenta.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure, SubFigure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle

from cmbunet.report.volumes import CaseVolumes, axis_letters, brain_mask
from cmbunet.utilities.geometry import mask_bbox_or_none

#: Side of the close-up crops in mm: a CMB is 2-10 mm wide, so its surroundings stay readable.
CROP_FOV_MM = 24.0
#: Radius (mm) of the circles that mark CMBs on the overview.
MARKER_RADIUS_MM = 6.0
SCORE_COLUMNS = {"screening_score": "screening", "discrimination_score": "discrimination",
                 "segmentation_score": "segmentation"}

#: view -> (fixed axis, horizontal axis, vertical axis, vertical axis points down)
VIEWS: dict[str, tuple[int, int, int, bool]] = {
    "axial": (2, 0, 1, True),
    "coronal": (1, 0, 2, False),
    "sagittal": (0, 1, 2, False),
}
AXIS_NAMES = "xyz"
OUTLINE_COLOR = "#ff3b30"
REFERENCE_COLOR = "#00e5ff"
MARKER_COLOR = "#ffd60a"
LETTER_COLOR = "#64d2ff"
#: Circle colour of each outcome against the reference (no reference: MARKER_COLOR).
OUTCOME_COLORS = {"TP": "#30d158", "FP": "#ff9f0a", "FN": "#ff40ff"}
OUTCOME_NAMES = {"TP": "true positive", "FP": "false positive", "FN": "missed reference CMB (false negative)"}


def marker_color(outcome: Any) -> str:
    return OUTCOME_COLORS.get(str(outcome), MARKER_COLOR)


def outline_masks(vol: CaseVolumes) -> list[tuple[np.ndarray, str, float]]:
    """(mask, colour, line width) of the outlines: the reference wide underneath, the prediction narrow on
    top, so that where the two coincide both stay visible (red inside a cyan band)."""
    pred = [(vol.mask, OUTLINE_COLOR, 1.1)]
    return pred if vol.reference is None else [(vol.reference, REFERENCE_COLOR, 2.6)] + pred


def legend_entries(compared: bool) -> list[tuple[str, str, str]]:
    """(kind, colour, meaning) of everything drawn on a sheet; kind is ``line`` (outline) or ``circle``."""
    entries = [("line", OUTLINE_COLOR, "predicted segmentation")]
    if compared:
        entries.append(("line", REFERENCE_COLOR, "reference segmentation"))
        entries += [("circle", OUTCOME_COLORS[k], OUTCOME_NAMES[k]) for k in ("TP", "FP", "FN")]
    else:
        entries.append(("circle", MARKER_COLOR, "detected CMB"))
    return entries


# ------------------------------------------------------------------------------------------------ planes
def crop_view(volume: np.ndarray, centre: Sequence[int], view: str, half: Sequence[int], fill: float = np.nan) -> np.ndarray:
    """The ``view`` plane through ``centre`` covering ``centre ± half`` voxels as ``(horizontal, vertical)``;
    voxels outside the volume get ``fill`` so a CMB at the border stays centred."""
    fixed = VIEWS[view][0]
    idx = [np.arange(c - h, c + h + 1) for c, h in zip(centre, half)]
    idx[fixed] = np.asarray([centre[fixed]])
    inside = [(a >= 0) & (a < n) for a, n in zip(idx, volume.shape)]
    sub = volume[np.ix_(*[np.clip(a, 0, n - 1) for a, n in zip(idx, volume.shape)])].astype(float)
    valid = inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
    return np.squeeze(np.where(valid, sub, fill), axis=fixed)


def pixel_edges(n: int, spacing: float, first_index: float = 0.0) -> np.ndarray:
    """Millimetre edges of ``n`` pixels whose first centre is at ``first_index`` voxels."""
    return (np.arange(n + 1) - 0.5 + first_index) * spacing


def outline_segments(mask2d: np.ndarray, h_edges: np.ndarray, v_edges: np.ndarray) -> np.ndarray:
    """Line segments ``(n, 2, 2)`` along the voxel borders of a 2D mask: an exact outline that, unlike a
    contour through voxel centres, shows precisely which voxels belong to the segmentation."""
    m = np.pad(np.asarray(mask2d, dtype=bool), 1)
    a, b = np.nonzero(m[1:, 1:-1] != m[:-1, 1:-1])  # border at h_edges[a], spanning v_edges[b]..[b+1]
    vertical = np.stack([np.stack([h_edges[a], v_edges[b]], -1), np.stack([h_edges[a], v_edges[b + 1]], -1)], 1)
    a, b = np.nonzero(m[1:-1, 1:] != m[1:-1, :-1])  # border at v_edges[b], spanning h_edges[a]..[a+1]
    horizontal = np.stack([np.stack([h_edges[a], v_edges[b]], -1), np.stack([h_edges[a + 1], v_edges[b]], -1)], 1)
    return np.concatenate([vertical, horizontal]).reshape(-1, 2, 2)


def draw_plane(ax: Any, plane: np.ndarray, h_edges: np.ndarray, v_edges: np.ndarray, v_down: bool,
               window: tuple[float, float], outlines: Sequence[tuple[np.ndarray, str, float]] = ()) -> None:
    """Greyscale plane on millimetre axes (nearest-neighbour, equal aspect), with ``(mask, colour, line
    width)`` outlines drawn in that order."""
    ax.imshow(np.ma.masked_invalid(plane.T), cmap=_grey(), vmin=window[0], vmax=window[1], origin="lower",
              interpolation="nearest", extent=(h_edges[0], h_edges[-1], v_edges[0], v_edges[-1]), aspect="equal")
    for mask, color, width in outlines:
        if np.any(mask):
            ax.add_collection(LineCollection(outline_segments(mask, h_edges, v_edges), colors=color, linewidths=width))
    ax.set_xlim(h_edges[0], h_edges[-1])
    ax.set_ylim((v_edges[-1], v_edges[0]) if v_down else (v_edges[0], v_edges[-1]))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_facecolor("black")


def _grey() -> Any:
    return colormaps["gray"].with_extremes(bad="#202020")


def label_edges(ax: Any, view: str, letters: list[tuple[str, str]]) -> None:
    """Print the anatomical letter of each panel edge (left, right, top, bottom)."""
    _, h, v, v_down = VIEWS[view]
    top, bottom = (letters[v][0], letters[v][1]) if v_down else (letters[v][1], letters[v][0])
    style = dict(transform=ax.transAxes, color=LETTER_COLOR, fontsize=8, fontweight="bold")
    ax.text(0.02, 0.53, letters[h][0], ha="left", va="bottom", **style)  # beside, not on, the centre ticks
    ax.text(0.98, 0.53, letters[h][1], ha="right", va="bottom", **style)
    ax.text(0.53, 0.98, top, ha="left", va="top", **style)
    ax.text(0.53, 0.02, bottom, ha="left", va="bottom", **style)


def add_legend(fig: Figure | SubFigure, compared: bool, y: float) -> None:
    """One line of legend (outline colours, circle colours) centred at height ``y`` of ``fig``."""
    handles = [Line2D([], [], color=c, linewidth=2) if kind == "line" else
               Line2D([], [], color=c, marker="o", markerfacecolor="none", markersize=9, linestyle="none")
               for kind, c, _ in legend_entries(compared)]
    labels = [text for _, _, text in legend_entries(compared)]
    fig.legend(handles, labels, loc="center", bbox_to_anchor=(0.5, y), ncol=len(handles), frameon=False,
               fontsize=9, handletextpad=0.4, columnspacing=1.4)


# ------------------------------------------------------------------------------------------------ overview
def choose_overview_slices(z_range: tuple[int, int], cmb_slices: Sequence[int], n: int) -> np.ndarray:
    """Up to ``n`` axial slices: every slice through a CMB centre first (while they fit), the rest spread
    evenly over ``z_range`` as far from the chosen ones as possible."""
    z0, z1 = z_range
    even = np.unique(np.rint(np.linspace(z0, z1, n)).astype(int))
    required = np.unique(np.asarray(cmb_slices, dtype=int))
    if required.size == 0 or required.size > n:
        return even
    rest = np.setdiff1d(even, required)
    if rest.size:
        dist = np.abs(rest[:, None] - required[None, :]).min(axis=1)
        rest = rest[np.argsort(-dist, kind="stable")[: n - required.size]]
    return np.union1d(required, rest)


def foreground_box(image: np.ndarray | None, mask: np.ndarray, margin: int = 3) -> list[tuple[int, int]]:
    """Inclusive index range per axis of the brain plus the mask, with an in-plane margin; the whole volume
    without an image, so that mask-only overviews still show where in the field of view the CMBs lie.

    Along z only slices holding at least a tenth of the largest brain cross-section count, so the mosaic
    does not spend panels on the noise-only caps of the scan."""
    if image is None:
        return [(0, s - 1) for s in mask.shape]
    brain = brain_mask(image)
    found = mask_bbox_or_none(brain | mask)
    if found is None:
        return [(0, s - 1) for s in mask.shape]
    box = [(max(lo - margin, 0), min(hi - 1 + margin, mask.shape[axis] - 1)) for axis, (lo, hi) in enumerate(found[:2])]
    area = brain.sum(axis=(0, 1))
    nz = np.flatnonzero((area >= 0.1 * area.max()) | mask.any(axis=(0, 1)))
    box.append((int(nz[0]), int(nz[-1])))
    return box


def overview_markers(vol: CaseVolumes) -> pd.DataFrame:
    """Every circle of the overview: detections (outcome TP/FP, or none) then missed reference CMBs (FN)."""
    cols = ["i", "j", "k", "label", "outcome"]
    det = vol.cmbs.assign(label=[_cmb_id(v) for v in vol.cmbs["id"]],
                          outcome=vol.cmbs["outcome"] if "outcome" in vol.cmbs else "")[cols] if len(vol.cmbs) else None
    missed = vol.missed_rows
    fn = missed.assign(label=[f"ref {_cmb_id(v)}" for v in missed["id"]], outcome="FN")[cols] if len(missed) else None
    parts = [p for p in (det, fn) if p is not None]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)


def draw_overview(fig: Figure | SubFigure, vol: CaseVolumes, window: tuple[float, float], num_slices: int = 16,
                  ncols: int = 4, compact: bool = False) -> None:
    """Axial mosaic over the brain with the segmentation (and reference) outlined and a circle at every
    detected CMB centre and every missed reference CMB.

    A CMB is circled on the shown slice nearest to its centre: solid when that slice passes through the
    centre, dashed (with the distance) when more CMB slices exist than panels."""
    box = foreground_box(vol.image, vol.mask if vol.reference is None else vol.mask | vol.reference)
    markers = overview_markers(vol)
    cmb_k = markers["k"].to_numpy(int)
    slices = choose_overview_slices(box[2], cmb_k, num_slices)
    (x0, x1), (y0, y1) = box[0], box[1]
    sx, sy, sz = (float(s) for s in vol.geometry["spacing"])
    h_edges, v_edges = pixel_edges(x1 - x0 + 1, sx, x0), pixel_edges(y1 - y0 + 1, sy, y0)
    nearest = np.abs(slices[None, :] - cmb_k[:, None]).argmin(axis=1) if cmb_k.size else np.zeros(0, int)
    letters = axis_letters(vol.geometry)
    nrows = math.ceil(len(slices) / ncols)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    background = vol.image if vol.image is not None else vol.mask.astype(np.float32)
    for n, ax in enumerate(axes.ravel()):
        if n >= len(slices):
            ax.set_axis_off()
            continue
        z = int(slices[n])
        outlines = [(m[x0:x1 + 1, y0:y1 + 1, z], c, w) for m, c, w in outline_masks(vol)]
        draw_plane(ax, background[x0:x1 + 1, y0:y1 + 1, z], h_edges, v_edges, True, window, outlines)
        for row in markers.loc[nearest == n].itertuples(index=False):
            off = abs(int(row.k) - z) * sz
            color = marker_color(row.outcome)
            ax.add_patch(Circle((int(row.i) * sx, int(row.j) * sy), MARKER_RADIUS_MM, fill=False, color=color,
                                linewidth=1.2, linestyle="-" if off == 0 else "--"))
            if not compact:
                text = row.label if off == 0 else f"{row.label} ({off:.0f} mm away)"
                ax.text(int(row.i) * sx + 0.75 * MARKER_RADIUS_MM, int(row.j) * sy - 0.75 * MARKER_RADIUS_MM, text,
                        color=color, fontsize=10, fontweight="bold", ha="left", va="bottom", clip_on=True)
        if not compact:
            ax.set_title(f"z = {z}", fontsize=8, pad=2)
            if n == 0:
                label_edges(ax, "axial", letters)
    if not compact:
        fig.suptitle("axial overview: voxel x to the right, voxel y downwards; circles are labelled with the CMB id",
                     fontsize=9)


# ------------------------------------------------------------------------------------------------ CMB rows
def _fmt(value: Any, fmt: str) -> str | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if not math.isfinite(v) else format(v, fmt)


def _cmb_id(value: Any) -> str:
    """CMB ids as written in the CSV (pandas turns integer ids into floats when rows are mixed with scores)."""
    try:
        f = float(value)
        return str(int(f)) if f.is_integer() else str(value)
    except (TypeError, ValueError):
        return str(value)


def _centre_text(row: pd.Series) -> list[str]:
    parts = [f"voxel ({int(row['i'])}, {int(row['j'])}, {int(row['k'])})"]
    world = [_fmt(row.get(c), ".1f") for c in ("x_mm", "y_mm", "z_mm")]
    if all(world):
        parts.append(f"world ({', '.join(world)}) mm")
    return parts


def cmb_title(row: pd.Series) -> str:
    """One line naming the CMB: id, volume, scores and centre (columns absent from the CSV are left out)."""
    parts = [f"CMB {_cmb_id(row.get('id'))}"]
    vol = _fmt(row.get("volume_mm3"), ".1f")
    parts.append(f"{vol} mm³" if vol else "volume n/a")
    scores = [f"{name} {s}" for col, name in SCORE_COLUMNS.items() if (s := _fmt(row.get(col), ".2f"))]
    if scores:
        parts.append(", ".join(scores))
    if row.get("outcome") in ("TP", "FP") and (d := _fmt(row.get("reference_distance_mm"), ".1f")):
        parts.append(f"nearest reference CMB {d} mm away")
    return "  ·  ".join(parts + _centre_text(row))


def missed_title(row: pd.Series) -> str:
    """One line naming a missed reference CMB: reference id, volume, nearest detection, centre."""
    parts = [f"reference CMB {_cmb_id(row.get('id'))}"]
    vol = _fmt(row.get("volume_mm3"), ".1f")
    parts.append(f"{vol} mm³" if vol else "volume n/a")
    d = _fmt(row.get("nearest_detection_mm"), ".1f")
    parts.append(f"nearest detection {d} mm away" if d else "no detection in this case")
    return "  ·  ".join(parts + _centre_text(row))


def crop_half_widths(spacing: Sequence[float], fov_mm: float = CROP_FOV_MM) -> list[int]:
    """Half-widths in voxels that give a ``fov_mm`` wide crop on each axis (at least one voxel)."""
    return [max(1, int(math.ceil(fov_mm / 2 / float(s)))) for s in spacing]


def draw_cmb_row(fig: Figure | SubFigure, vol: CaseVolumes, row: pd.Series, window: tuple[float, float],
                 with_letters: bool, missed: bool = False) -> None:
    """Four panels around one CMB (a detection, or with ``missed`` a missed reference CMB): plain axial,
    then axial, coronal and sagittal with the outlines."""
    centre = [int(row["i"]), int(row["j"]), int(row["k"])]
    spacing = [float(s) for s in vol.geometry["spacing"]]
    half = crop_half_widths(spacing)
    background = vol.image if vol.image is not None else vol.mask.astype(np.float32)
    outcome = "FN" if missed else str(row.get("outcome", "") or "")
    color = marker_color(outcome)
    axes = fig.subplots(1, 4)
    panels = [("axial", False), ("axial", True), ("coronal", True), ("sagittal", True)]
    letters = axis_letters(vol.geometry)
    masks = outline_masks(vol)
    for ax, (view, outlined) in zip(axes, panels):
        fixed, h, v, v_down = VIEWS[view]
        plane = crop_view(background, centre, view, half)
        outlines = ([(crop_view(m.astype(np.float32), centre, view, half, fill=0.0) > 0.5, c, w) for m, c, w in masks]
                    if outlined else [])
        h_edges = pixel_edges(plane.shape[0], spacing[h], -half[h])
        v_edges = pixel_edges(plane.shape[1], spacing[v], -half[v])
        draw_plane(ax, plane, h_edges, v_edges, v_down, window, outlines)
        _centre_ticks(ax, h_edges, v_edges, color)
        name = f"{view} ({AXIS_NAMES[fixed]} = {centre[fixed]})"
        if outlined:
            name += " + outlines" if len(masks) > 1 else " + outline"
        ax.set_title(name, fontsize=8, pad=2)
        if with_letters:
            label_edges(ax, view, letters)
    title = missed_title(row) if missed else cmb_title(row)
    if outcome in OUTCOME_COLORS:
        tag = {"TP": "TP", "FP": "FP", "FN": "MISSED"}[outcome]
        fig.text(0.01, 0.985, tag, fontsize=9, fontweight="bold", ha="left", va="top", color="black",
                 bbox=dict(boxstyle="round,pad=0.25", facecolor=color, edgecolor="none"))
        fig.suptitle(title, fontsize=9, x=0.075, ha="left")
    else:
        fig.suptitle(title, fontsize=9, x=0.01, ha="left")


def _centre_ticks(ax: Any, h_edges: np.ndarray, v_edges: np.ndarray, color: str = MARKER_COLOR) -> None:
    """Short ticks on the panel border pointing at the CMB centre, leaving the lesion itself unobscured."""
    lh, lv = 0.12 * (h_edges[-1] - h_edges[0]), 0.12 * (v_edges[-1] - v_edges[0])
    style = dict(color=color, linewidth=1.0)
    ax.plot([h_edges[0], h_edges[0] + lh], [0, 0], **style)
    ax.plot([h_edges[-1] - lh, h_edges[-1]], [0, 0], **style)
    ax.plot([0, 0], [v_edges[0], v_edges[0] + lv], **style)
    ax.plot([0, 0], [v_edges[-1] - lv, v_edges[-1]], **style)
