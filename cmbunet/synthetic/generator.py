"""Synthetic skull-stripped T2*-weighted cases with labelled cerebral microbleeds and unlabelled mimics.

A case is built in four steps: draw the acquisition (spacing, oblique direction, origin, intensity scale, SNR),
draw a brain (:mod:`cmbunet.synthetic.anatomy`), place microbleeds and mimics that never touch each other
(:mod:`cmbunet.synthetic.lesions`), then render: tissue contrast x bias field, PSF blur, lesion darkening,
Rician noise, and zero outside the brain. Everything follows from one integer seed.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from scipy import ndimage

from cmbunet.imageio import ImageProperties
from cmbunet.synthetic import anatomy as anat
from cmbunet.synthetic.sites import SITES, parse_sites
from cmbunet.synthetic.template import sample_template_brain
from cmbunet.synthetic.lesions import (
    DarkObject,
    Grid,
    Part,
    clearance,
    ellipsoid_profile,
    render_object,
    sphere_label,
    sphere_profile,
    supersampling,
    tube_profile,
)

SIZES = ("small", "realistic")
#: Brain models: the parametric phantom, the warped MNI152 template, or by size (template for realistic cases).
ANATOMIES = ("auto", "phantom", "template")
MODALITIES = ("T2S", "T1", "T2")
MAX_CMBS = 15
#: Fraction of cases drawn without any microbleed (VALDO: 22 of 72 training scans).
P_NO_CMB = 0.25
#: CMB radius distribution in mm (VALDO: 1.5 +- 0.46), clipped to plausible sizes.
CMB_RADIUS_MEAN_MM, CMB_RADIUS_SD_MM, CMB_RADIUS_RANGE_MM = 1.5, 0.46, (0.7, 3.5)
#: Share of lobar, deep and infratentorial/lower microbleeds.
CMB_REGIONS = {"lobar": 0.6, "deep": 0.25, "infratentorial": 0.15}
#: Anatomy is evaluated on a grid at most this fine (mm), then linearly upsampled: it is smooth anyway.
ANATOMY_RESOLUTION_MM = 1.5


@dataclass
class SyntheticCase:
    """One case: images per modality and label in (x, y, z), geometry, and the ground truth of every object."""

    images: dict[str, np.ndarray]
    label: np.ndarray
    props: ImageProperties
    cmbs: list[dict]
    mimics: list[dict]
    brain: np.ndarray = field(repr=False, default=None)
    meta: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- acquisition


def _random_rotation(rng: np.random.Generator, max_deg: float, min_deg: float = 0.0) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(min_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _small_spacing(rng: np.random.Generator) -> np.ndarray:
    """Spacing of the quick-test world (no named site): 0.8-1.3 mm pixels, 1-2.5 mm slices."""
    inplane, slc = rng.uniform(0.8, 1.3), rng.uniform(1.0, 2.5)
    y = inplane * (rng.uniform(0.95, 1.05) if rng.random() < 0.2 else 1.0)  # rare non-square pixels
    return np.array([inplane, y, slc])


def _grid_shape(semi: np.ndarray, tilt: np.ndarray, spacing: np.ndarray, size: str) -> tuple[int, int, int]:
    """Field of view: the tilted brain's extent plus a margin of background, at least 32 voxels per axis."""
    half = np.sqrt(((tilt * semi[None, :]) ** 2).sum(axis=1)) * 1.15
    margin = 4.0 if size == "small" else 12.0
    shape = np.ceil((2 * half + 2 * margin) / spacing).astype(int)
    return tuple(int(s) for s in np.maximum(shape, 32))


# -------------------------------------------------------------------------------------------------- anatomy


def _anatomy_grid(grid: Grid) -> tuple[tuple[int, ...], np.ndarray, list[np.ndarray]]:
    """Integer down-sampling factors and the image-frame mm coordinates (1D per axis) of the coarse voxels."""
    factors = np.maximum(1, np.floor(ANATOMY_RESOLUTION_MM / grid.spacing)).astype(int)
    cshape = tuple(int(np.ceil(s / f)) for s, f in zip(grid.shape, factors))
    axes = [((np.arange(n) * f + (f - 1) / 2.0) * sp - c).astype(np.float32)
            for n, f, sp, c in zip(cshape, factors, grid.spacing, grid.centre_mm)]
    return cshape, factors, axes


def _tissue_on_grid(params, axes: list[np.ndarray], tilt: np.ndarray, voxel_mm: np.ndarray,
                    coarse_mm: float) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Tissue fractions of the coarse anatomy voxels.

    The template is sampled at points, so a thick voxel (a 3 mm slice) is averaged over sub-samples about 1 mm
    apart across its extent: partial volume across the slice is what makes thick-slice scans look different.
    The phantom's fractions already carry a partial-volume width.
    """
    if isinstance(params, anat.AnatomyParams):
        return params.tissue_fractions(anat.Coords(*np.meshgrid(*axes, indexing="ij", sparse=True), tilt), coarse_mm)
    counts = [int(np.ceil(v / 1.0)) if v > 1.2 else 1 for v in voxel_mm]
    offsets = [((np.arange(n) + 0.5) / n - 0.5) * v for n, v in zip(counts, voxel_mm)]
    total_frac: dict[str, np.ndarray] | None = None
    total_phi = None
    for d in itertools.product(*offsets):
        co = anat.Coords(*np.meshgrid(*[a + np.float32(o) for a, o in zip(axes, d)], indexing="ij", sparse=True), tilt)
        frac, phi = params.tissue_fractions(co, coarse_mm)
        if total_frac is None:
            total_frac, total_phi = frac, phi
        else:
            for t in total_frac:
                total_frac[t] += frac[t]
            total_phi += phi
    n = float(np.prod(counts))
    return {t: v / np.float32(n) for t, v in total_frac.items()}, total_phi / np.float32(n)


def _upsample(arr: np.ndarray, factors: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Trilinear upsampling by integer factors (coarse voxel centres sit at the centre of their fine block)."""
    if np.all(factors == 1):
        return arr
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None, None]
    size = [int(n * f) for n, f in zip(arr.shape, factors)]
    up = torch.nn.functional.interpolate(t, size=size, mode="trilinear", align_corners=False)[0, 0]
    return up[: shape[0], : shape[1], : shape[2]].numpy()


def _modality_rng(seed: int, modality: str) -> np.random.Generator:
    """Own random stream per contrast, so a case's T2* image is the same whichever other contrasts are asked for."""
    return np.random.default_rng([int(seed), 1 + MODALITIES.index(modality)])


def _contrasts(seed: int, modalities: Sequence[str], iron: bool, gm_wm_gain: float = 1.0) -> dict[str, dict[str, float]]:
    """Tissue contrasts per modality; ``gm_wm_gain`` scales the grey/white difference (field strength, TE)."""
    out = {}
    for m in modalities:
        rng = _modality_rng(seed, m)
        base = anat.BASE_CONTRAST[m]
        c = {t: base[t] * rng.uniform(0.93, 1.07) for t in anat.TISSUES}
        if gm_wm_gain != 1.0:
            for t in ("gm", "deep_gm"):
                c[t] = c["wm"] + (c[t] - c["wm"]) * gm_wm_gain
        if m == "T2S" and iron:
            c["deep_gm"] = c["wm"] * rng.uniform(0.55, 0.8)  # iron-laden nuclei: darker than white matter
        elif m == "T2" and iron:
            c["deep_gm"] = c["wm"] * rng.uniform(0.85, 1.0)
        out[m] = c
    return out


# -------------------------------------------------------------------------------------------------- objects


class _Placer:
    """Draws candidate positions per region and keeps objects apart."""

    def __init__(self, rng, params, co: anat.Coords, grid: Grid, labels, phi, axes, appearance: dict | None = None):
        self.rng, self.params, self.tilt, self.grid = rng, params, co.tilt, grid
        #: site-dependent look of microbleeds (blooming, darkening); None keeps the quick-test world's defaults
        self.appearance = appearance
        # bloom-to-bloom clearance that keeps labels apart under 26-connectivity, even for one-voxel labels
        self.gap = max(2.0, 1.5 * float(np.linalg.norm(grid.spacing)))
        self.placed: list[DarkObject] = []
        qx, qy, qz = co.q
        a, b, c = params.semi_axes
        depth = -phi
        parenchyma = (labels == anat.GM) | (labels == anat.WM)
        rnorm = np.sqrt((qx / a) ** 2 + (qy / b) ** 2 + (qz / c) ** 2)
        self.regions = {
            "lobar": parenchyma & (depth > 0.5 * params.cortex_mm) & (depth < params.cortex_mm + 4.0 + 6.0 * max(params.scale, 0.5))
            & (qz > -0.35 * c),
            "deep": (labels == anat.DEEP_GM) | ((labels == anat.WM) & (rnorm < 0.45)),
            "infratentorial": parenchyma & (qz < -0.45 * c) & (depth > 1.5),
            "white_matter": (labels == anat.WM) & (depth > 4.0 * max(params.scale, 0.5)),
            "near_deep_gm": (labels == anat.DEEP_GM),
            "parenchyma": parenchyma | (labels == anat.DEEP_GM),
            # cortex touching sulcal CSF: where cortical vessels cut across a slice look like dots
            "sulcal": (labels == anat.GM) & ndimage.binary_dilation(labels == anat.CSF) & (depth > 1.0),
        }
        self.axes = axes
        self.spacing_coarse = np.array([ax[1] - ax[0] if len(ax) > 1 else 1.0 for ax in axes])

    def point_in(self, region: str) -> np.ndarray | None:
        mask = self.regions[region]
        idx = np.flatnonzero(mask)
        if idx.size == 0:
            return None
        i = np.unravel_index(int(idx[self.rng.integers(idx.size)]), mask.shape)
        p = np.array([self.axes[ax][i[ax]] for ax in range(3)], dtype=float)
        return p + self.rng.uniform(-0.5, 0.5, 3) * self.spacing_coarse

    def tissue_at(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.params.tissue_labels(anat.Coords(pts[:, 0], pts[:, 1], pts[:, 2], self.tilt))

    def in_parenchyma(self, pts: np.ndarray, margin_mm: float) -> bool:
        labels, phi = self.tissue_at(pts)
        ok = (labels == anat.GM) | (labels == anat.WM) | (labels == anat.DEEP_GM)
        return bool(ok.all() and (phi < -margin_mm).all())

    def fits(self, obj: DarkObject, extra_gap: float = 0.0) -> bool:
        return all(clearance(obj.collision, o.collision) >= self.gap + extra_gap for o in self.placed)


def _shell(centre: np.ndarray, r: float) -> np.ndarray:
    """Centre plus 6 points at distance ``r``: a cheap test that a lesion lies wholly in parenchyma."""
    return centre[None, :] + np.vstack([np.zeros(3), np.eye(3) * r, -np.eye(3) * r])


def _acquire(signal: np.ndarray, brain: np.ndarray, sigma: float, scale: float, offset: float,
             rng: np.random.Generator) -> np.ndarray:
    """Rician noise (magnitude of complex Gaussian noise), site scale/offset, zero outside the brain.

    Works on the brain voxels only (``signal = image[brain]``): half the work, and background is exactly 0.
    """
    noise = rng.standard_normal(signal.shape, dtype=np.float32)
    noise *= np.float32(sigma)
    signal += noise
    np.square(signal, out=signal)
    rng.standard_normal(out=noise, dtype=np.float32)
    noise *= np.float32(sigma)
    np.square(noise, out=noise)
    signal += noise
    np.sqrt(signal, out=signal)
    signal += np.float32(offset)
    signal *= np.float32(scale)
    out = np.zeros(brain.shape, dtype=np.float32)
    out[brain] = signal
    return out


def _make_cmb(placer: _Placer, region: str) -> DarkObject | None:
    rng = placer.rng
    r = float(np.clip(rng.normal(CMB_RADIUS_MEAN_MM, CMB_RADIUS_SD_MM), *CMB_RADIUS_RANGE_MM))
    c = placer.point_in(region) if region in placer.regions else None
    if c is None:
        return None
    # susceptibility blooming: the dark spot outgrows the deposit, relatively more for small ones
    look = placer.appearance or {}
    bloom = (r * rng.uniform(1.05, 1.3) + rng.uniform(0.2, 0.5)) * look.get("bloom_gain", 1.0)
    sigma = 0.2 + 0.15 * r
    if not placer.in_parenchyma(_shell(c, bloom + 0.5), margin_mm=0.3):
        return None
    depth = rng.uniform(*look.get("cmb_depth", (0.6, 0.95)))
    return DarkObject(
        kind="cmb",
        parts=[Part(c, bloom + 3.5 * sigma, sphere_profile(c, bloom, sigma))],
        strength={"T2S": depth, "T2": depth * rng.uniform(0.1, 0.25), "T1": depth * rng.uniform(0.0, 0.08)},
        collision=[(c, bloom)],
        info={"radius_mm": r, "region": region, "contrast": depth},
    )


def _bezier(p0, p1, p2, n: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _make_vein(placer: _Placer) -> DarkObject | None:
    """A medullary/deep vein: a curved dark tube running outward through white matter over many slices."""
    rng = placer.rng
    start = placer.point_in("white_matter")
    if start is None:
        return None
    s = max(placer.params.scale, 0.45)
    q_dir = start / (np.linalg.norm(start) + 1e-6)
    direction = q_dir + rng.normal(0, 0.5, 3)
    if rng.random() < 0.5:  # many veins run mostly through-plane, which is what makes them span slices
        direction[2] += np.sign(rng.normal()) * 1.5
    direction /= np.linalg.norm(direction)
    length = rng.uniform(12.0, 35.0) * s
    end = start + length * direction
    bend = rng.normal(0, 0.2, 3) * length
    radius = rng.uniform(0.4, 1.0)
    pts = _bezier(start, (start + end) / 2 + bend, end, max(8, int(length / (0.6 * radius + 0.2))))
    labels, phi = placer.tissue_at(pts)
    inside = ((labels == anat.GM) | (labels == anat.WM) | (labels == anat.DEEP_GM)) & (phi < -radius - 0.5)
    stop = int(np.argmin(inside)) if not inside.all() else len(pts)
    pts = pts[:stop]
    if len(pts) < 6 or np.linalg.norm(pts[-1] - pts[0]) < 5.0 * s:
        return None
    sigma = 0.15 + 0.2 * radius
    chunk = 4
    parts = []
    for i in range(0, len(pts) - 1, chunk):
        seg = pts[i : i + chunk + 1]
        centre = seg.mean(axis=0)
        ext = float(np.linalg.norm(seg - centre, axis=1).max()) + radius + 3.5 * sigma
        parts.append(Part(centre, ext, tube_profile(seg, radius, sigma)))
    depth = rng.uniform(0.35, 0.75)
    return DarkObject(
        kind="vein", parts=parts,
        strength={"T2S": depth, "T2": depth * 0.1, "T1": depth * 0.05},
        collision=[(p, radius) for p in pts],
        info={"radius_mm": radius, "length_mm": float(np.linalg.norm(np.diff(pts, axis=0), axis=1).sum())},
    )


def _make_calcification(placer: _Placer) -> DarkObject | None:
    """Irregular clump of dark spheres, mostly in the deep grey nuclei (pallidal calcification)."""
    rng = placer.rng
    c = placer.point_in("near_deep_gm" if rng.random() < 0.7 else "parenchyma")
    if c is None:
        return None
    n = int(rng.integers(2, 5))
    radii = rng.uniform(1.2, 2.8, n)
    centres = c + rng.normal(0, 1.0, (n, 3)) * radii[:, None] * 0.8
    if not placer.in_parenchyma(centres, margin_mm=1.0):
        return None
    sigma = 0.4
    depth = rng.uniform(0.6, 0.9)
    return DarkObject(
        kind="calcification",
        parts=[Part(cc, rr + 3.5 * sigma, sphere_profile(cc, rr, sigma)) for cc, rr in zip(centres, radii)],
        strength={"T2S": depth, "T2": depth * 0.5, "T1": depth * rng.uniform(-0.3, 0.2)},
        collision=[(cc, rr) for cc, rr in zip(centres, radii)],
        info={"num_lobes": n, "max_radius_mm": float(radii.max())},
    )


def _make_spot(placer: _Placer, flat: bool) -> DarkObject | None:
    """A dark spot that is not round: elongated (cigar) or flat (pancake), e.g. a vessel cut or artefact."""
    rng = placer.rng
    c = placer.point_in("parenchyma")
    if c is None:
        return None
    if flat:
        semi = np.array([rng.uniform(2.0, 3.5), rng.uniform(2.0, 3.5), rng.uniform(0.4, 0.7)])
    else:
        semi = np.array([rng.uniform(2.5, 5.0), rng.uniform(0.5, 0.9), rng.uniform(0.5, 0.9)])
    rot = _random_rotation(rng, 180.0)
    if not placer.in_parenchyma(_shell(c, float(semi.max()) + 0.5), margin_mm=1.0):
        return None
    sigma = 0.25
    depth = rng.uniform(0.5, 0.85)
    return DarkObject(
        kind="flat_spot" if flat else "elongated_spot",
        parts=[Part(c, float(semi.max()) + 3.5 * sigma, ellipsoid_profile(c, rot, semi, sigma))],
        strength={"T2S": depth, "T2": depth * 0.2, "T1": depth * 0.05},
        collision=[(c, float(semi.max()))],
        info={"semi_axes_mm": semi.round(3).tolist()},
    )


def _make_flow_void(placer: _Placer) -> DarkObject | None:
    """A cortical vessel cut across the slice in a sulcus: a small round dark dot, the classic CMB mimic."""
    rng = placer.rng
    c = placer.point_in("sulcal")
    if c is None:
        return None
    r = rng.uniform(0.5, 1.3)
    _, phi = placer.tissue_at(c[None, :])
    if not phi[0] < -r - 0.3:
        return None
    # a short straight vessel through the slice, so it is round in-plane and spans one to three slices
    axis = np.array([0.0, 0.0, 1.0]) + rng.normal(0, 0.35, 3)
    axis /= np.linalg.norm(axis)
    half = rng.uniform(1.0, 4.0)
    pts = c + np.linspace(-half, half, 7)[:, None] * axis
    sigma = 0.2 + 0.15 * r
    depth = rng.uniform(0.45, 0.9)
    return DarkObject(
        kind="flow_void", parts=[Part(c, half + r + 3.5 * sigma, tube_profile(pts, r, sigma))],
        strength={"T2S": depth, "T2": depth * rng.uniform(0.5, 0.9), "T1": depth * rng.uniform(0.1, 0.4)},
        collision=[(p, r) for p in pts[::2]],
        info={"radius_mm": float(r), "length_mm": float(2 * half)},
    )


def _make_faint_spot(placer: _Placer) -> DarkObject | None:
    """A small, faint dark spot (partial volume of a tiny vessel, noise clump): darker than tissue, not a CMB."""
    rng = placer.rng
    c = placer.point_in("parenchyma")
    if c is None:
        return None
    r = rng.uniform(0.4, 1.0)
    if not placer.in_parenchyma(_shell(c, r + 0.5), margin_mm=0.5):
        return None
    sigma = 0.3
    depth = rng.uniform(0.2, 0.45)
    return DarkObject(
        kind="faint_spot", parts=[Part(c, r + 3.5 * sigma, sphere_profile(c, r, sigma))],
        strength={"T2S": depth, "T2": depth * 0.3, "T1": depth * 0.1},
        collision=[(c, r)], info={"radius_mm": float(r), "contrast": float(depth)},
    )


def _make_susceptibility_artefact(placer: _Placer) -> DarkObject | None:
    """Signal loss at the skull base (air in the sinuses, petrous bone): a flat dark smear at the brain's lower
    surface, frontal or temporal."""
    rng = placer.rng
    a, b, cz = placer.params.semi_axes
    side = rng.choice([-1.0, 1.0])
    q = (np.array([rng.uniform(-0.25, 0.25) * a, 0.6 * b, -0.35 * cz]) if rng.random() < 0.5
         else np.array([side * 0.55 * a, 0.1 * b, -0.45 * cz]))
    c = placer.tilt @ q
    semi = np.array([rng.uniform(5.0, 11.0), rng.uniform(4.0, 9.0), rng.uniform(1.2, 2.5)])
    labels, _ = placer.tissue_at(c[None, :])
    if labels[0] == anat.BACKGROUND:
        return None
    rot = placer.tilt @ _random_rotation(rng, 20.0)
    sigma = 1.2
    depth = rng.uniform(0.3, 0.7)
    return DarkObject(
        kind="susceptibility_artefact", parts=[Part(c, float(semi.max()) + 3.5 * sigma, ellipsoid_profile(c, rot, semi, sigma))],
        strength={"T2S": depth, "T2": depth * 0.3, "T1": depth * 0.1},
        collision=[(c, float(semi.max()))], info={"semi_axes_mm": semi.round(3).tolist()},
    )


def _num_cmbs(rng: np.random.Generator) -> int:
    """0 in about a quarter of cases, otherwise a skewed count (most cases few, some many) up to 15."""
    if rng.random() < P_NO_CMB:
        return 0
    return int(min(MAX_CMBS, 1 + rng.geometric(0.22) - 1))


def _place(placer: _Placer, make, attempts: int) -> DarkObject | None:
    for _ in range(attempts):
        obj = make()
        if obj is not None and placer.fits(obj):
            placer.placed.append(obj)
            return obj
    return None


# ---------------------------------------------------------------------------------------------------- case


def synthesize_case(
    seed: int,
    size: str = "small",
    num_cmbs: int | None = None,
    modalities: Sequence[str] = ("T2S",),
    anatomy: str = "auto",
    sites: Sequence[str] | str | None = None,
) -> SyntheticCase:
    """Generate one case from ``seed`` (same seed, same arrays). ``num_cmbs`` forces the microbleed count.

    ``anatomy``: ``phantom`` (parametric), ``template`` (warped MNI152) or ``auto`` (template for realistic
    cases, phantom for small ones). ``sites``: acquisition sites to draw from (:mod:`cmbunet.synthetic.sites`);
    realistic cases default to the whole catalogue. Small cases without named sites keep the quick-test world
    (0.8-1.3 mm pixels, 1-2.5 mm slices, fewer mimic kinds) that the test suite's learning bars were set on.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    if anatomy not in ANATOMIES:
        raise ValueError(f"anatomy must be one of {ANATOMIES}, got {anatomy!r}")
    bad = [m for m in modalities if m not in MODALITIES]
    if bad or not modalities:
        raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {list(modalities)}")
    if num_cmbs is not None and not 0 <= num_cmbs <= MAX_CMBS:
        raise ValueError(f"num_cmbs must lie in [0, {MAX_CMBS}], got {num_cmbs}")
    site_names = None if (sites is None and size == "small") else parse_sites(sites)
    if anatomy == "auto":
        anatomy = "template" if size == "realistic" else "phantom"
    rng = np.random.default_rng(seed)

    # acquisition and anatomy
    params = sample_template_brain(rng, size) if anatomy == "template" else anat.sample_anatomy(rng, size)
    if site_names is None:
        site, acq = "small", None
        spacing = _small_spacing(rng)
    else:
        site = str(site_names[int(rng.integers(len(site_names)))])
        acq = SITES[site].draw(rng)
        spacing = acq["spacing"]
    tilt = _random_rotation(rng, 10.0)  # head position in the scanner
    grid = Grid(_grid_shape(params.semi_axes, tilt, spacing, size), spacing)
    lo_deg, hi_deg = acq["oblique_deg"] if acq else (3.0, 20.0)
    direction = _random_rotation(rng, hi_deg, min_deg=lo_deg)  # oblique acquisition
    origin = -direction @ grid.centre_mm + rng.normal(0, 15.0, 3)
    iron = bool(rng.random() < 0.35)
    contrasts = _contrasts(seed, modalities, iron, acq["gm_wm_gain"] if acq else 1.0)
    scale = float(10 ** rng.uniform(1.5, 3.3))
    offset = float(rng.uniform(0.0, 0.05))
    if acq:  # the site sets the SNR; contrasts differ a little around it
        snr = {m: acq["snr"] * float(_modality_rng(seed, m).uniform(0.85, 1.15)) for m in MODALITIES}
        psf_sigma_vox = acq["psf_sigma_vox"]
    else:
        snr = {m: float(_modality_rng(seed, m).uniform(12.0, 40.0)) for m in MODALITIES}
        psf_sigma_vox = rng.uniform(0.3, 0.6)

    # tissue on the anatomy grid
    cshape, factors, axes = _anatomy_grid(grid)
    co = anat.Coords(*np.meshgrid(*axes, indexing="ij", sparse=True), tilt)
    coarse_mm = float(np.mean(grid.spacing * factors))
    frac, phi = _tissue_on_grid(params, axes, tilt, grid.spacing * factors, coarse_mm)
    labels = anat.labels_from_fractions(frac, phi)
    bias = anat.bias_field(params, co)
    if acq:
        bias = bias ** np.float32(acq["bias_scale"])
    shading = bias * anat.white_matter_texture(params, co)

    # objects
    placer = _Placer(rng, params, co, grid, labels, phi, axes, appearance=acq)
    n_target = _num_cmbs(rng) if num_cmbs is None else int(num_cmbs)
    regions = list(CMB_REGIONS)
    probs = np.array(list(CMB_REGIONS.values()))
    cmb_objs: list[DarkObject] = []
    for _ in range(n_target):
        region = str(rng.choice(regions, p=probs))
        obj = _place(placer, lambda: _make_cmb(placer, region), attempts=60)
        if obj is None:  # region full or too small in this brain: anywhere in the parenchyma
            obj = _place(placer, lambda: _make_cmb(placer, "parenchyma"), attempts=60)
        if obj is not None:
            cmb_objs.append(obj)
    if num_cmbs is not None and len(cmb_objs) < num_cmbs:
        raise ValueError(f"could only place {len(cmb_objs)} of {num_cmbs} microbleeds in the brain of seed {seed}")
    mimic_objs: list[DarkObject] = []
    s = params.scale
    n_veins = int(rng.integers(1, 4) + rng.poisson(4.0 * s))
    makers = [lambda: _make_vein(placer)] * n_veins
    makers += [lambda: _make_calcification(placer)] * int(rng.random() < 0.4) * int(rng.integers(1, 3))
    makers += [lambda: _make_spot(placer, flat=bool(rng.random() < 0.5))] * int(rng.poisson(1.0 + 2.0 * s))
    if acq:  # the multi-site world: the mimics that fool detectors on real scans
        makers += [lambda: _make_flow_void(placer)] * int(rng.poisson(1.0 + 3.0 * s))
        makers += [lambda: _make_faint_spot(placer)] * int(rng.poisson(1.0 + 2.0 * s))
        makers += [lambda: _make_susceptibility_artefact(placer)] * int(rng.random() < 0.5)
    for make in makers:
        obj = _place(placer, make, attempts=20)
        if obj is not None:
            mimic_objs.append(obj)

    # rendering
    samples = supersampling(grid)
    rendered = [(o, render_object(grid, o, samples)) for o in cmb_objs + mimic_objs]
    phi_full = _upsample(phi, factors, grid.shape)
    brain = phi_full < 0
    images = {}
    for m in modalities:
        c = contrasts[m]
        img = anat.intensity(frac, c) * shading  # outside is CSF-like, so the blur keeps a bright rim
        img = ndimage.gaussian_filter(img, psf_sigma_vox / factors, mode="nearest")
        img = _upsample(img, factors, grid.shape)
        for obj, r in rendered:
            if r is not None:
                sl, dark = r
                img[sl] *= 1.0 - np.float32(obj.strength[m]) * dark
        images[m] = _acquire(img[brain], brain, sigma=float(c["wm"]) / snr[m], scale=scale, offset=offset,
                             rng=np.random.default_rng([int(seed), 11 + MODALITIES.index(m)]))

    label = np.zeros(grid.shape, dtype=np.uint8)
    props: ImageProperties = {
        "spacing": [float(v) for v in spacing],
        "origin": [float(v) for v in origin],
        "direction": [float(v) for v in direction.reshape(-1)],
        "shape": [int(v) for v in grid.shape],
    }
    world = lambda p: (origin + direction @ (grid.to_voxel(p) * spacing)).tolist()  # noqa: E731
    cmbs = []
    for obj in cmb_objs:
        c = obj.parts[0].centre
        sl, inside = sphere_label(grid, c, obj.info["radius_mm"])
        label[sl][inside] = 1
        cmbs.append({"center_world_mm": world(c), "center_voxel": grid.to_voxel(c).tolist(),
                     "radius_mm": obj.info["radius_mm"], "region": obj.info["region"],
                     "num_voxels": int(inside.sum())})
    mimics = []
    for obj in mimic_objs:
        c = np.mean([cc for cc, _ in obj.collision], axis=0)
        mimics.append({"kind": obj.kind, "center_world_mm": world(c), "center_voxel": grid.to_voxel(c).tolist(), **obj.info})
    if iron:
        for name, centre, _ in params.nuclei:
            if name == "lentiform":
                p = tilt @ centre
                mimics.append({"kind": "iron_deep_gm", "center_world_mm": world(p), "center_voxel": grid.to_voxel(p).tolist()})
    meta = {"seed": int(seed), "size": size, "site": site, "anatomy": anatomy, "snr": {m: snr[m] for m in modalities}, "intensity_scale": scale,
            "iron_deep_gm": iron, "head_tilt": tilt.round(6).tolist()}
    return SyntheticCase(images=images, label=label, props=props, cmbs=cmbs, mimics=mimics, brain=brain, meta=meta)
