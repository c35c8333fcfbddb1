"""Where microbleeds and their mimics go in a synthetic brain, and how each one looks.

A :class:`Placer` knows the brain's regions on the anatomy grid and the objects placed so far; each ``_make_*``
function draws one object (a :class:`~cmbunet.synthetic.lesions.DarkObject`) or gives up, and :func:`place_cmbs`
and :func:`place_mimics` keep drawing until an object fits without touching the others. All draws come from the
placer's generator in a fixed order, so the same seed places the same objects.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage

from cmbunet.synthetic import anatomy as anat
from cmbunet.synthetic.lesions import (
    EDGE_REACH,
    DarkObject,
    Grid,
    Part,
    ball,
    clearance,
    darkening,
    ellipsoid_profile,
    tube_profile,
)
from cmbunet.synthetic.rendering import random_rotation

#: Most microbleeds one case gets (drawn counts are capped, forced counts checked).
MAX_CMBS = 15
#: Fraction of cases drawn without any microbleed (VALDO: 22 of 72 training scans).
P_NO_CMB = 0.25
#: CMB radius distribution in mm (VALDO: 1.5 +- 0.46), clipped to plausible sizes.
CMB_RADIUS_MEAN_MM, CMB_RADIUS_SD_MM, CMB_RADIUS_RANGE_MM = 1.5, 0.46, (0.7, 3.5)
#: Share of lobar, deep and infratentorial/lower microbleeds.
CMB_REGIONS = {"lobar": 0.6, "deep": 0.25, "infratentorial": 0.15}


class Placer:
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
        """A random point (mm) of a random coarse voxel of ``region``, jittered within it; None when empty."""
        mask = self.regions[region]
        idx = np.flatnonzero(mask)
        if idx.size == 0:
            return None
        i = np.unravel_index(int(idx[self.rng.integers(idx.size)]), mask.shape)
        p = np.array([self.axes[ax][i[ax]] for ax in range(3)], dtype=float)
        return p + self.rng.uniform(-0.5, 0.5, 3) * self.spacing_coarse

    def tissue_at(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tissue labels and signed distance to the brain surface at exact points, not the coarse grid."""
        return self.params.tissue_labels(anat.Coords(pts[:, 0], pts[:, 1], pts[:, 2], self.tilt))

    def in_parenchyma(self, pts: np.ndarray, margin_mm: float) -> bool:
        labels, phi = self.tissue_at(pts)
        ok = (labels == anat.GM) | (labels == anat.WM) | (labels == anat.DEEP_GM)
        return bool(ok.all() and (phi < -margin_mm).all())

    def fits(self, obj: DarkObject, extra_gap: float = 0.0) -> bool:
        """True when ``obj`` keeps the gap to every placed object, so labels never merge."""
        return all(clearance(obj.collision, o.collision) >= self.gap + extra_gap for o in self.placed)


def _shell(centre: np.ndarray, r: float) -> np.ndarray:
    """Centre plus 6 points at distance ``r``: a cheap test that a lesion lies wholly in parenchyma."""
    return centre[None, :] + np.vstack([np.zeros(3), np.eye(3) * r, -np.eye(3) * r])



def _make_cmb(placer: Placer, region: str) -> DarkObject | None:
    """A round microbleed whose dark bloom lies wholly in parenchyma, with the site's blooming and darkening."""
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
        parts=[ball(c, bloom, sigma)],
        strength=darkening(depth, rng.uniform(0.1, 0.25), rng.uniform(0.0, 0.08)),
        collision=[(c, bloom)],
        info={"radius_mm": r, "region": region, "contrast": depth},
    )


def _bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, n: int) -> np.ndarray:
    """``n`` points along a quadratic Bezier curve: a smoothly bent vein."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _make_vein(placer: Placer) -> DarkObject | None:
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
        ext = float(np.linalg.norm(seg - centre, axis=1).max()) + radius + EDGE_REACH * sigma
        parts.append(Part(centre, ext, tube_profile(seg, radius, sigma)))
    depth = rng.uniform(0.35, 0.75)
    return DarkObject(
        kind="vein", parts=parts,
        strength=darkening(depth, 0.1, 0.05),
        collision=[(p, radius) for p in pts],
        info={"radius_mm": radius, "length_mm": float(np.linalg.norm(np.diff(pts, axis=0), axis=1).sum())},
    )


def _make_calcification(placer: Placer) -> DarkObject | None:
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
        parts=[ball(cc, rr, sigma) for cc, rr in zip(centres, radii)],
        strength=darkening(depth, 0.5, rng.uniform(-0.3, 0.2)),
        collision=[(cc, rr) for cc, rr in zip(centres, radii)],
        info={"num_lobes": n, "max_radius_mm": float(radii.max())},
    )


def _make_spot(placer: Placer, flat: bool) -> DarkObject | None:
    """A dark spot that is not round: elongated (cigar) or flat (pancake), e.g. a vessel cut or artefact."""
    rng = placer.rng
    c = placer.point_in("parenchyma")
    if c is None:
        return None
    if flat:
        semi = np.array([rng.uniform(2.0, 3.5), rng.uniform(2.0, 3.5), rng.uniform(0.4, 0.7)])
    else:
        semi = np.array([rng.uniform(2.5, 5.0), rng.uniform(0.5, 0.9), rng.uniform(0.5, 0.9)])
    rot = random_rotation(rng, 180.0)
    if not placer.in_parenchyma(_shell(c, float(semi.max()) + 0.5), margin_mm=1.0):
        return None
    sigma = 0.25
    depth = rng.uniform(0.5, 0.85)
    return DarkObject(
        kind="flat_spot" if flat else "elongated_spot",
        parts=[Part(c, float(semi.max()) + EDGE_REACH * sigma, ellipsoid_profile(c, rot, semi, sigma))],
        strength=darkening(depth, 0.2, 0.05),
        collision=[(c, float(semi.max()))],
        info={"semi_axes_mm": semi.round(3).tolist()},
    )


def _make_flow_void(placer: Placer) -> DarkObject | None:
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
        kind="flow_void", parts=[Part(c, half + r + EDGE_REACH * sigma, tube_profile(pts, r, sigma))],
        strength=darkening(depth, rng.uniform(0.5, 0.9), rng.uniform(0.1, 0.4)),
        collision=[(p, r) for p in pts[::2]],
        info={"radius_mm": float(r), "length_mm": float(2 * half)},
    )


def _make_faint_spot(placer: Placer) -> DarkObject | None:
    """A small, faint dark spot (partial volume of a tiny vessel, noise clump): darker than tissue, not a CMB."""
    c = placer.point_in("parenchyma")
    if c is None:
        return None
    r = placer.rng.uniform(0.4, 1.0)
    if not placer.in_parenchyma(_shell(c, r + 0.5), margin_mm=0.5):
        return None
    sigma, depth = 0.3, placer.rng.uniform(0.2, 0.45)
    return DarkObject(
        kind="faint_spot", parts=[ball(c, r, sigma)],
        strength=darkening(depth, 0.3, 0.1),
        collision=[(c, r)], info={"radius_mm": float(r), "contrast": float(depth)},
    )


def _make_susceptibility_artefact(placer: Placer) -> DarkObject | None:
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
    rot = placer.tilt @ random_rotation(rng, 20.0)
    sigma = 1.2
    depth = rng.uniform(0.3, 0.7)
    return DarkObject(
        kind="susceptibility_artefact", parts=[Part(c, float(semi.max()) + EDGE_REACH * sigma,
                                                      ellipsoid_profile(c, rot, semi, sigma))],
        strength=darkening(depth, 0.3, 0.1),
        collision=[(c, float(semi.max()))], info={"semi_axes_mm": semi.round(3).tolist()},
    )


def num_cmbs(rng: np.random.Generator) -> int:
    """0 in about a quarter of cases, otherwise a skewed count (most cases few, some many) up to 15."""
    if rng.random() < P_NO_CMB:
        return 0
    return int(min(MAX_CMBS, 1 + rng.geometric(0.22) - 1))


def _place(placer: Placer, make: Callable[[], DarkObject | None], attempts: int) -> DarkObject | None:
    """Draw with ``make`` until an object fits beside the placed ones (then keep it), at most ``attempts`` times."""
    for _ in range(attempts):
        obj = make()
        if obj is not None and placer.fits(obj):
            placer.placed.append(obj)
            return obj
    return None


def place_cmbs(placer: Placer, count: int) -> list[DarkObject]:
    """Up to ``count`` microbleeds, each in a region drawn by :data:`CMB_REGIONS`, else anywhere in parenchyma."""
    rng = placer.rng
    regions = list(CMB_REGIONS)
    probs = np.array(list(CMB_REGIONS.values()))
    cmb_objs: list[DarkObject] = []
    for _ in range(count):
        region = str(rng.choice(regions, p=probs))
        obj = _place(placer, lambda: _make_cmb(placer, region), attempts=60)
        if obj is None:  # region full or too small in this brain: anywhere in the parenchyma
            obj = _place(placer, lambda: _make_cmb(placer, "parenchyma"), attempts=60)
        if obj is not None:
            cmb_objs.append(obj)
    return cmb_objs


def place_mimics(placer: Placer, multi_site: bool) -> list[DarkObject]:
    """Veins, calcifications and odd spots; the multi-site world adds flow voids, faint spots and artefacts.

    The counts are all drawn before the first mimic is placed (the order the seed's cases were made with).
    """
    rng = placer.rng
    s = placer.params.scale
    n_veins = int(rng.integers(1, 4) + rng.poisson(4.0 * s))
    makers: list[Callable[[], DarkObject | None]] = [lambda: _make_vein(placer)] * n_veins
    makers += [lambda: _make_calcification(placer)] * int(rng.random() < 0.4) * int(rng.integers(1, 3))
    makers += [lambda: _make_spot(placer, flat=bool(rng.random() < 0.5))] * int(rng.poisson(1.0 + 2.0 * s))
    if multi_site:  # the mimics that fool detectors on real scans
        makers += [lambda: _make_flow_void(placer)] * int(rng.poisson(1.0 + 3.0 * s))
        makers += [lambda: _make_faint_spot(placer)] * int(rng.poisson(1.0 + 2.0 * s))
        makers += [lambda: _make_susceptibility_artefact(placer)] * int(rng.random() < 0.5)
    mimic_objs: list[DarkObject] = []
    for make in makers:
        obj = _place(placer, make, attempts=20)
        if obj is not None:
            mimic_objs.append(obj)
    return mimic_objs
