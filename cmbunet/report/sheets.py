"""Per-case quality-control sheets: an axial overview mosaic and one row of close-up crops per detected CMB.

Everything is drawn in voxel-index space, so the picture is the stored data without any resampling: every
panel is placed on millimetre axes built from the voxel spacing, which keeps the physical aspect ratio of
anisotropic scans, and pixels are drawn nearest-neighbour so single voxels stay visible. The orientation is
the same for every case:

* axial: voxel x to the right, voxel y downwards (slice index z);
* coronal: voxel x to the right, voxel z upwards (slice index y);
* sagittal: voxel y to the right, voxel z upwards (slice index x).

The nearest anatomical direction of each edge (L/R, A/P, S/I, from the direction cosines) is printed on
the panels, because voxel axes of oblique or flipped scans need not match the anatomical ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure, SubFigure
from matplotlib.patches import Circle
from scipy import ndimage
from skimage.filters import threshold_otsu

from cmbunet.imageio.reader_writer import ImageProperties
from cmbunet.utilities.file_io import atomic_path

#: Side of the close-up crops in mm: a CMB is 2-10 mm wide, so its surroundings stay readable.
CROP_FOV_MM = 24.0
#: Percentiles of the brain intensities that map to black and white.
WINDOW_PERCENTILES = (0.5, 99.5)
#: Radius (mm) of the circles that mark CMBs on the overview.
MARKER_RADIUS_MM = 6.0
SCORE_COLUMNS = {"screening_score": "screening", "discrimination_score": "discrimination",
                 "segmentation_score": "segmentation"}
STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)

#: view -> (fixed axis, horizontal axis, vertical axis, vertical axis points down)
VIEWS: dict[str, tuple[int, int, int, bool]] = {
    "axial": (2, 0, 1, True),
    "coronal": (1, 0, 2, False),
    "sagittal": (0, 1, 2, False),
}
AXIS_NAMES = "xyz"
#: Without an image the mask itself is the background: 0 black, 1 light grey under the red outline.
MASK_ONLY_WINDOW = (0.0, 1.25)
OUTLINE_COLOR = "#ff3b30"
MARKER_COLOR = "#ffd60a"
LETTER_COLOR = "#64d2ff"
FIG_WIDTH_IN = 12.0
DPI = 100


@dataclass
class CaseVolumes:
    """What one sheet needs: the binary prediction, its geometry, the T2* image on the same grid (or None)
    and the CMB table with centre voxels ``i, j, k`` and, where known, volume and scores."""

    case: str
    mask: np.ndarray
    geometry: ImageProperties
    image: np.ndarray | None
    cmbs: pd.DataFrame
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ geometry
def _direction(geometry: ImageProperties) -> np.ndarray:
    return np.asarray(geometry["direction"], dtype=float).reshape(3, 3)


def voxel_to_world(points: np.ndarray, geometry: ImageProperties) -> np.ndarray:
    """World (mm) positions of continuous voxel positions ``(n, 3)``, as SimpleITK defines them."""
    scaled = np.asarray(points, dtype=float).reshape(-1, 3) * np.asarray(geometry["spacing"], dtype=float)
    return np.asarray(geometry["origin"], dtype=float) + scaled @ _direction(geometry).T


def world_to_voxel(points: np.ndarray, geometry: ImageProperties) -> np.ndarray:
    """Continuous voxel positions of world points ``(n, 3)``; the inverse of :func:`voxel_to_world`."""
    offset = np.asarray(points, dtype=float).reshape(-1, 3) - np.asarray(geometry["origin"], dtype=float)
    return np.linalg.solve(_direction(geometry), offset.T).T / np.asarray(geometry["spacing"], dtype=float)


def axis_letters(geometry: ImageProperties) -> list[tuple[str, str]]:
    """For each voxel axis, the anatomical letters of its low and high end (LPS world: +x=L, +y=P, +z=S).

    The dominant direction cosine decides, so an oblique scan gets the nearest anatomical direction."""
    ends = (("R", "L"), ("A", "P"), ("I", "S"))
    d = _direction(geometry)
    out = []
    for axis in range(3):
        world = int(np.argmax(np.abs(d[:, axis])))
        low, high = ends[world]
        out.append((low, high) if d[world, axis] > 0 else (high, low))
    return out


# ------------------------------------------------------------------------------------------------ CMB table
def cmbs_from_mask(mask: np.ndarray, geometry: ImageProperties) -> pd.DataFrame:
    """One row per 26-connected component: id, centre voxel (centre of mass, rounded), world centre, volume."""
    labels, n = ndimage.label(mask, structure=STRUCTURE_26)
    if n == 0:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in ("id", "i", "j", "k", "x_mm", "y_mm", "z_mm", "volume_mm3")})
    index = np.arange(1, n + 1)
    com = np.asarray(ndimage.center_of_mass(mask, labels, index), dtype=float).reshape(-1, 3)
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    world = voxel_to_world(com, geometry)
    vox = np.rint(com).astype(np.int64)
    return pd.DataFrame({"id": index, "i": vox[:, 0], "j": vox[:, 1], "k": vox[:, 2],
                         "x_mm": world[:, 0], "y_mm": world[:, 1], "z_mm": world[:, 2],
                         "volume_mm3": counts * float(np.prod(geometry["spacing"]))})


def normalise_cmb_table(table: pd.DataFrame | None, mask: np.ndarray, geometry: ImageProperties) -> tuple[pd.DataFrame, list[str]]:
    """Make a CMB table drawable: ids, integer centre voxels inside the volume; notes say what was filled in.

    Centres come from ``i, j, k``, else from the world columns, else the whole table is rebuilt from the
    mask, so an incomplete or absent CSV never prevents a sheet."""
    notes: list[str] = []
    if table is None:
        return cmbs_from_mask(mask, geometry), notes
    table = table.copy()
    if not {"i", "j", "k"} <= set(table.columns):
        if {"x_mm", "y_mm", "z_mm"} <= set(table.columns):
            vox = world_to_voxel(table[["x_mm", "y_mm", "z_mm"]].to_numpy(float), geometry)
            table[["i", "j", "k"]] = np.rint(vox).astype(np.int64)
            notes.append("CMB table has no voxel centres (i, j, k); they were computed from the world centres")
        else:
            notes.append("CMB table has neither voxel (i, j, k) nor world (x_mm, y_mm, z_mm) centres; "
                         "CMBs were taken from the mask instead")
            return cmbs_from_mask(mask, geometry), notes
    centres = table[["i", "j", "k"]].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    bad = ~np.isfinite(centres).all(axis=1)
    shape = np.asarray(mask.shape)
    outside = ~bad & ((np.nan_to_num(centres) < 0) | (np.nan_to_num(centres) > shape - 1)).any(axis=1)
    if bad.any() or outside.any():
        notes.append(f"{int(bad.sum() + outside.sum())} CMB row(s) without a usable centre inside the image were skipped")
    table = table.loc[~(bad | outside)].copy()
    table[["i", "j", "k"]] = np.rint(centres[~(bad | outside)]).astype(np.int64)
    if "id" not in table.columns:
        table.insert(0, "id", np.arange(1, len(table) + 1))
    return table.reset_index(drop=True), notes


# ------------------------------------------------------------------------------------------------ intensities
def brain_mask(image: np.ndarray) -> np.ndarray:
    """Voxels brighter than Otsu's threshold: the brain of a skull-stripped scan, the head otherwise."""
    finite = np.isfinite(image)
    values = image[finite]
    if values.size == 0 or values.min() == values.max():
        return finite
    return finite & (image > threshold_otsu(values))


def display_window(image: np.ndarray, brain: np.ndarray | None = None) -> tuple[float, float]:
    """Black and white levels from robust percentiles of the brain, so bright vessels or zero backgrounds
    do not wash out the contrast in which CMBs are judged."""
    values = image[brain] if brain is not None and brain.any() else image[np.isfinite(image)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, WINDOW_PERCENTILES))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


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
               window: tuple[float, float], outline: np.ndarray | None = None) -> None:
    """Greyscale plane on millimetre axes (nearest-neighbour, equal aspect), with an optional mask outline."""
    cmap = _grey()
    ax.imshow(np.ma.masked_invalid(plane.T), cmap=cmap, vmin=window[0], vmax=window[1], origin="lower",
              interpolation="nearest", extent=(h_edges[0], h_edges[-1], v_edges[0], v_edges[-1]), aspect="equal")
    if outline is not None and np.any(outline):
        ax.add_collection(LineCollection(outline_segments(outline, h_edges, v_edges), colors=OUTLINE_COLOR, linewidths=1.1))
    ax.set_xlim(h_edges[0], h_edges[-1])
    ax.set_ylim((v_edges[-1], v_edges[0]) if v_down else (v_edges[0], v_edges[-1]))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_facecolor("black")


def _grey() -> Any:
    from matplotlib import colormaps

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


def _foreground_box(image: np.ndarray | None, mask: np.ndarray, margin: int = 3) -> list[tuple[int, int]]:
    """Inclusive index range per axis of the brain plus the mask, with an in-plane margin; the whole volume
    without an image, so that mask-only overviews still show where in the field of view the CMBs lie.

    Along z only slices holding at least a tenth of the largest brain cross-section count, so the mosaic
    does not spend panels on the noise-only caps of the scan."""
    if image is None:
        return [(0, s - 1) for s in mask.shape]
    brain = brain_mask(image)
    fg = brain | mask
    if not fg.any():
        return [(0, s - 1) for s in mask.shape]
    box = []
    for axis in range(2):
        nz = np.flatnonzero(fg.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append((max(int(nz[0]) - margin, 0), min(int(nz[-1]) + margin, mask.shape[axis] - 1)))
    area = brain.sum(axis=(0, 1))
    nz = np.flatnonzero((area >= 0.1 * area.max()) | mask.any(axis=(0, 1)))
    box.append((int(nz[0]), int(nz[-1])))
    return box


def draw_overview(fig: Figure | SubFigure, vol: CaseVolumes, window: tuple[float, float], num_slices: int = 16,
                  ncols: int = 4, compact: bool = False) -> None:
    """Axial mosaic over the brain with the segmentation outlined and a circle at every CMB centre.

    A CMB is circled on the shown slice nearest to its centre: solid when that slice passes through the
    centre, dashed (with the distance) when more CMB slices exist than panels."""
    box = _foreground_box(vol.image, vol.mask)
    cmb_k = vol.cmbs["k"].to_numpy(int) if len(vol.cmbs) else np.zeros(0, int)
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
        draw_plane(ax, background[x0:x1 + 1, y0:y1 + 1, z], h_edges, v_edges, True, window,
                   vol.mask[x0:x1 + 1, y0:y1 + 1, z])
        for row in vol.cmbs.loc[nearest == n].itertuples(index=False):
            off = abs(int(row.k) - z) * sz
            ax.add_patch(Circle((int(row.i) * sx, int(row.j) * sy), MARKER_RADIUS_MM, fill=False, color=MARKER_COLOR,
                                linewidth=1.2, linestyle="-" if off == 0 else "--"))
            if not compact:
                text = _cmb_id(row.id) if off == 0 else f"{_cmb_id(row.id)} ({off:.0f} mm away)"
                ax.text(int(row.i) * sx + 0.75 * MARKER_RADIUS_MM, int(row.j) * sy - 0.75 * MARKER_RADIUS_MM, text,
                        color=MARKER_COLOR, fontsize=10, fontweight="bold", ha="left", va="bottom", clip_on=True)
        if not compact:
            ax.set_title(f"z = {z}", fontsize=8, pad=2)
            if n == 0:
                label_edges(ax, "axial", letters)
    if not compact:
        fig.suptitle("axial overview: voxel x to the right, voxel y downwards; red = segmentation, "
                     "yellow circle = detected CMB (label = CMB id)", fontsize=9)


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


def cmb_title(row: pd.Series) -> str:
    """One line naming the CMB: id, volume, scores and centre (columns absent from the CSV are left out)."""
    parts = [f"CMB {_cmb_id(row.get('id'))}"]
    vol = _fmt(row.get("volume_mm3"), ".1f")
    parts.append(f"{vol} mm³" if vol else "volume n/a")
    scores = [f"{name} {s}" for col, name in SCORE_COLUMNS.items() if (s := _fmt(row.get(col), ".2f"))]
    if scores:
        parts.append(", ".join(scores))
    parts.append(f"voxel ({int(row['i'])}, {int(row['j'])}, {int(row['k'])})")
    world = [_fmt(row.get(c), ".1f") for c in ("x_mm", "y_mm", "z_mm")]
    if all(world):
        parts.append(f"world ({', '.join(world)}) mm")
    return "  ·  ".join(parts)


def crop_half_widths(spacing: Sequence[float], fov_mm: float = CROP_FOV_MM) -> list[int]:
    """Half-widths in voxels that give a ``fov_mm`` wide crop on each axis (at least one voxel)."""
    return [max(1, int(math.ceil(fov_mm / 2 / float(s)))) for s in spacing]


def draw_cmb_row(fig: Figure | SubFigure, vol: CaseVolumes, row: pd.Series, window: tuple[float, float],
                 with_letters: bool) -> None:
    """Four panels around one CMB: plain axial, then axial, coronal and sagittal with the outline."""
    centre = [int(row["i"]), int(row["j"]), int(row["k"])]
    spacing = [float(s) for s in vol.geometry["spacing"]]
    half = crop_half_widths(spacing)
    background = vol.image if vol.image is not None else vol.mask.astype(np.float32)
    axes = fig.subplots(1, 4)
    panels = [("axial", False), ("axial", True), ("coronal", True), ("sagittal", True)]
    letters = axis_letters(vol.geometry)
    for ax, (view, outlined) in zip(axes, panels):
        fixed, h, v, v_down = VIEWS[view]
        plane = crop_view(background, centre, view, half)
        mask = crop_view(vol.mask.astype(np.float32), centre, view, half, fill=0.0) > 0.5 if outlined else None
        h_edges = pixel_edges(plane.shape[0], spacing[h], -half[h])
        v_edges = pixel_edges(plane.shape[1], spacing[v], -half[v])
        draw_plane(ax, plane, h_edges, v_edges, v_down, window, mask)
        _centre_ticks(ax, h_edges, v_edges)
        name = f"{view} ({AXIS_NAMES[fixed]} = {centre[fixed]})" + (" + outline" if outlined else "")
        ax.set_title(name, fontsize=8, pad=2)
        if with_letters:
            label_edges(ax, view, letters)
    fig.suptitle(cmb_title(row), fontsize=9, x=0.01, ha="left")


def _centre_ticks(ax: Any, h_edges: np.ndarray, v_edges: np.ndarray) -> None:
    """Short ticks on the panel border pointing at the CMB centre, leaving the lesion itself unobscured."""
    lh, lv = 0.12 * (h_edges[-1] - h_edges[0]), 0.12 * (v_edges[-1] - v_edges[0])
    style = dict(color=MARKER_COLOR, linewidth=1.0)
    ax.plot([h_edges[0], h_edges[0] + lh], [0, 0], **style)
    ax.plot([h_edges[-1] - lh, h_edges[-1]], [0, 0], **style)
    ax.plot([0, 0], [v_edges[0], v_edges[0] + lv], **style)
    ax.plot([0, 0], [v_edges[-1] - lv, v_edges[-1]], **style)


# ------------------------------------------------------------------------------------------------ sheets
def num_sheets(num_cmbs: int, max_per_sheet: int) -> int:
    """Sheets needed for a case: the first one always exists (it carries the overview)."""
    return max(1, math.ceil(num_cmbs / max_per_sheet))


def _save(fig: Figure, path: Path, dpi: int) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, facecolor=fig.get_facecolor())


def render_sheets(vol: CaseVolumes, out_dir: str | Path, max_per_sheet: int = 8, num_slices: int = 16) -> list[Path]:
    """Write ``CASE_sheetN.png`` (sheet 1: overview mosaic, then up to ``max_per_sheet`` CMB rows) and return
    their paths; sheets left over from an earlier run with more CMBs are removed."""
    out_dir = Path(out_dir)
    window = display_window(vol.image, brain_mask(vol.image)) if vol.image is not None else MASK_ONLY_WINDOW
    box = _foreground_box(vol.image, vol.mask)
    ov_aspect = ((box[1][1] - box[1][0] + 1) * vol.geometry["spacing"][1]) / ((box[0][1] - box[0][0] + 1) * vol.geometry["spacing"][0])
    ov_rows = math.ceil(min(num_slices, box[2][1] - box[2][0] + 1) / 4)
    ov_height = ov_rows * (FIG_WIDTH_IN / 4) * ov_aspect + 0.4 * ov_rows + 0.6
    row_height = FIG_WIDTH_IN / 4 + 0.55
    total = num_sheets(len(vol.cmbs), max_per_sheet)
    paths = []
    for sheet in range(total):
        rows = vol.cmbs.iloc[sheet * max_per_sheet:(sheet + 1) * max_per_sheet]
        heights = ([ov_height] if sheet == 0 else []) + [row_height] * len(rows)
        header = 0.6 + (0.35 if sheet == 0 and vol.image is None else 0.0) + (0.4 if sheet == 0 and not len(rows) else 0)
        fig = Figure(figsize=(FIG_WIDTH_IN, sum(heights) + header), facecolor="white")
        title = f"{vol.case}: {len(vol.cmbs)} CMB{'s' if len(vol.cmbs) != 1 else ''} detected   (sheet {sheet + 1} of {total})"
        subtitle = []
        if vol.image is None and sheet == 0:
            subtitle.append("no T2* image available: the prediction mask is shown on a black background")
        if sheet == 0 and not len(rows):
            subtitle.append("no CMB detected in this case")
        fig.suptitle("\n".join([title, *subtitle]), fontsize=11, fontweight="bold", y=1 - 0.1 / (sum(heights) + header), va="top")
        grid = fig.add_gridspec(len(heights) + 1, 1, height_ratios=[header, *heights], hspace=0,
                                left=0, right=1, top=1, bottom=0)
        subs = [fig.add_subfigure(grid[n + 1, 0]) for n in range(len(heights))]
        if sheet == 0:
            draw_overview(subs[0], vol, window, num_slices)
            subs[0].subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.6 / ov_height, wspace=0.04, hspace=0.12)
        for n, (sub, (_, row)) in enumerate(zip(subs[1 if sheet == 0 else 0:], rows.iterrows())):
            draw_cmb_row(sub, vol, row, window, with_letters=(n == 0))
            sub.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=1 - 0.5 / row_height, wspace=0.05)
        path = out_dir / f"{vol.case}_sheet{sheet + 1}.png"
        _save(fig, path, DPI)
        paths.append(path)
    for stale in out_dir.glob(f"{vol.case}_sheet*.png"):
        suffix = stale.name[len(vol.case) + len("_sheet"):-len(".png")]
        if suffix.isdigit() and int(suffix) > total:
            stale.unlink()
    return paths


def render_thumbnail(vol: CaseVolumes, path: str | Path, num_slices: int = 8) -> Path:
    """A small overview mosaic (no labels) for the index page."""
    window = display_window(vol.image, brain_mask(vol.image)) if vol.image is not None else MASK_ONLY_WINDOW
    box = _foreground_box(vol.image, vol.mask)
    aspect = ((box[1][1] - box[1][0] + 1) * vol.geometry["spacing"][1]) / ((box[0][1] - box[0][0] + 1) * vol.geometry["spacing"][0])
    rows = math.ceil(min(num_slices, box[2][1] - box[2][0] + 1) / 4)
    fig = Figure(figsize=(3.2, max(0.4, 0.8 * aspect * rows)), facecolor="black")
    draw_overview(fig, vol, window, num_slices, ncols=4, compact=True)
    fig.subplots_adjust(left=0, right=1, top=1, bottom=0, wspace=0.02, hspace=0.02)
    path = Path(path)
    _save(fig, path, 80)
    return path
