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
#: Vein radius range (mm) of the quick-test world and of the wider world (thin pial veins to large deep veins).
VEIN_RADIUS_MM = {"narrow": (0.4, 1.0), "wide": (0.3, 1.5)}
#: Fraction of cases drawn without any microbleed (VALDO: 22 of 72 training scans).
P_NO_CMB = 0.25
#: CMB radius distribution in mm (VALDO: 1.5 +- 0.46), clipped to plausible sizes.
CMB_RADIUS_MEAN_MM, CMB_RADIUS_SD_MM, CMB_RADIUS_RANGE_MM = 1.5, 0.46, (0.7, 3.5)
#: Share of lobar, deep and infratentorial/lower microbleeds.
CMB_REGIONS = {"lobar": 0.6, "deep": 0.25, "infratentorial": 0.15}
#: Share and radius range (mm) of the extra small microbleeds of the wider world: after partial volume on 2.5-5 mm
#: slices these keep a fraction of their contrast, and they are what detectors miss on thick slices.
SMALL_CMB_SHARE, SMALL_CMB_RADIUS_MM = 0.3, (0.7, 1.3)


class Placer:
    """Draws candidate positions per region and keeps objects apart."""

    def __init__(self, rng, params, co: anat.Coords, grid: Grid, labels, phi, axes, appearance: dict | None = None,
                 wide: bool = False):
        self.rng, self.params, self.tilt, self.grid = rng, params, co.tilt, grid
        #: site-dependent look of microbleeds (blooming, darkening); None keeps the quick-test world's defaults
        self.appearance = appearance
        #: the wider training world (:func:`place_mimics`): small CMBs, veins of every kind, calcifications in CSF
        self.wide = wide
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
        # where the wider world puts what is not parenchyma: ventricles and cisterns (deep CSF), the midline, the
        # brain's surface; a microbleed never lies there, a calcification or a pial vein often does
        s = max(params.scale, 0.45)
        deep_csf = (labels == anat.CSF) & (depth > 10.0 * s) & (rnorm < 0.55)  # ventricles, not deep sulci
        self.regions.update({
            "choroid_plexus": deep_csf & (np.abs(qx) > 4.0 * s),
            "pineal": deep_csf & (np.abs(qx) < 4.0 * s) & (qy < 0.0) & (qy > -0.45 * b) & (np.abs(qz) < 0.3 * c),
            "falx": (labels != anat.BACKGROUND) & (labels != anat.WM) & (np.abs(qx) < 2.5 * s) & (depth < 25.0 * s)
            & (qz > 0.0),
            "surface": (labels != anat.BACKGROUND) & (depth > 0.6) & (depth < 3.0),
            "periventricular": self.regions["parenchyma"] & ndimage.binary_dilation(deep_csf, iterations=2),
        })
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

    def surface_normal(self, pts: np.ndarray, step_mm: float = 0.7) -> tuple[np.ndarray, np.ndarray]:
        """Signed distance to the brain surface at ``pts`` (N, 3) and its unit gradient (outward), by central
        differences: what keeps a pial vein on the surface."""
        offsets = np.vstack([np.zeros(3), np.eye(3) * step_mm, -np.eye(3) * step_mm])  # (7, 3)
        _, phi = self.tissue_at((pts[:, None, :] + offsets[None]).reshape(-1, 3))
        phi = np.asarray(phi, dtype=float).reshape(len(pts), 7)
        grad = (phi[:, 1:4] - phi[:, 4:7]) / (2 * step_mm)
        norm = np.linalg.norm(grad, axis=1, keepdims=True)
        return phi[:, 0], grad / np.maximum(norm, 1e-6)

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
    if placer.wide and rng.random() < SMALL_CMB_SHARE:  # the small ones thick slices hide (r 0.7-1.3 mm)
        r = float(rng.uniform(*SMALL_CMB_RADIUS_MM))
    else:
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


def _make_vein(placer: Placer, start_region: str = "white_matter") -> DarkObject | None:
    """A medullary/deep vein: a curved dark tube running outward through white matter over many slices; from
    ``periventricular`` a deep vein along the ventricles, from ``sulcal`` a cortical vein diving into a sulcus."""
    rng = placer.rng
    start = placer.point_in(start_region)
    if start is None:
        return None
    s = max(placer.params.scale, 0.45)
    q_dir = start / (np.linalg.norm(start) + 1e-6)
    direction = q_dir + rng.normal(0, 0.5, 3)
    if rng.random() < 0.5:  # many veins run mostly through-plane, which is what makes them span slices
        direction[2] += np.sign(rng.normal()) * 1.5
    direction /= np.linalg.norm(direction)
    if start_region == "sulcal":  # inward, down the sulcus
        direction = -q_dir + rng.normal(0, 0.6, 3)
        direction /= np.linalg.norm(direction)
    length = rng.uniform(12.0, 35.0) * s
    end = start + length * direction
    bend = rng.normal(0, 0.35 if placer.wide else 0.2, 3) * length  # straight to tortuous
    radius = rng.uniform(*VEIN_RADIUS_MM["wide" if placer.wide else "narrow"])
    pts = _bezier(start, (start + end) / 2 + bend, end, max(8, int(length / (0.6 * radius + 0.2))))
    labels, phi = placer.tissue_at(pts)
    tissue = (labels == anat.GM) | (labels == anat.WM) | (labels == anat.DEEP_GM)
    if start_region != "white_matter":  # deep and sulcal veins run beside CSF
        tissue |= labels == anat.CSF
    inside = tissue & (phi < -radius - 0.5)
    stop = int(np.argmin(inside)) if not inside.all() else len(pts)
    pts = pts[:stop]
    if len(pts) < 6 or np.linalg.norm(pts[-1] - pts[0]) < 5.0 * s:
        return None
    return _tube(placer, pts, radius, "vein" if start_region == "white_matter" else f"vein_{start_region}")


def _tube(placer: Placer, pts: np.ndarray, radius: float, kind: str) -> DarkObject:
    """A dark tube along ``pts``, split into parts of a few points each so each renders on a small box; faint to
    SWI-strong in the wider world."""
    rng = placer.rng
    sigma = 0.15 + 0.2 * radius
    chunk = 4
    parts = []
    for i in range(0, len(pts) - 1, chunk):
        seg = pts[i : i + chunk + 1]
        centre = seg.mean(axis=0)
        ext = float(np.linalg.norm(seg - centre, axis=1).max()) + radius + EDGE_REACH * sigma
        parts.append(Part(centre, ext, tube_profile(seg, radius, sigma)))
    depth = rng.uniform(*((0.2, 0.9) if placer.wide else (0.35, 0.75)))
    return DarkObject(
        kind=kind, parts=parts,
        strength=darkening(depth, 0.1, 0.05),
        collision=[(p, radius) for p in pts],
        info={"radius_mm": radius, "length_mm": float(np.linalg.norm(np.diff(pts, axis=0), axis=1).sum())},
    )


def _make_pial_vein(placer: Placer) -> DarkObject | None:
    """A pial/cortical vein on the brain's surface: a curve in the surface's tangent plane, pulled back onto the
    surface at its starting depth, so that it follows the cortex over many millimetres and crosses thick slices
    as a row of dots."""
    rng = placer.rng
    start = placer.point_in("surface")
    if start is None:
        return None
    phi0, normal = placer.surface_normal(start[None, :])
    t = rng.normal(size=3)
    t -= (t @ normal[0]) * normal[0]
    t /= np.linalg.norm(t) + 1e-9
    s = max(placer.params.scale, 0.45)
    length = rng.uniform(10.0, 40.0) * s
    radius = rng.uniform(*VEIN_RADIUS_MM["wide"])
    end = start + length * t
    side = np.cross(normal[0], t)
    pts = _bezier(start, (start + end) / 2 + side * rng.normal(0, 0.3) * length, end,
                  max(8, int(length / (0.6 * radius + 0.2))))
    depth0 = max(-float(phi0[0]), radius + 0.3)
    for _ in range(2):  # Newton steps onto the surface phi = -depth0
        phi, grad = placer.surface_normal(pts)
        pts = pts - (phi + depth0)[:, None] * grad
    labels, phi = placer.tissue_at(pts)
    inside = (labels != anat.BACKGROUND) & (phi < -radius * 0.5) & (phi > -depth0 - 2.0)
    stop = int(np.argmin(inside)) if not inside.all() else len(pts)
    pts = pts[:stop]
    if len(pts) < 6 or np.linalg.norm(pts[-1] - pts[0]) < 5.0 * s:
        return None
    return _tube(placer, pts, radius, "vein_pial")


def _make_csf_calcification(placer: Placer, place: str) -> DarkObject | None:
    """A calcification where microbleeds never lie: choroid plexus (in the ventricles), pineal and habenula
    (midline, behind the third ventricle) or falx (midline, between the hemispheres); 1-5 mm, round or a clump."""
    rng = placer.rng
    c = placer.point_in(place)
    if c is None:
        return None
    n = 1 if rng.random() < 0.5 else int(rng.integers(2, 4))
    radii = rng.uniform(0.5, 2.5, n)
    centres = c + (rng.normal(0, 0.6, (n, 3)) * radii[:, None] if n > 1 else np.zeros((1, 3)))
    if place == "falx":  # thin and flat-ish along the midline plane
        centres[:, 0] = c[0]
    labels, phi = placer.tissue_at(centres)
    if (labels == anat.BACKGROUND).any() or (phi > -radii - 0.3).any():
        return None
    sigma = 0.3
    depth = rng.uniform(0.5, 0.95)
    return DarkObject(
        kind=f"calcification_{place}",
        parts=[ball(cc, rr, sigma) for cc, rr in zip(centres, radii)],
        strength=darkening(depth, 0.5, rng.uniform(-0.3, 0.2)),
        collision=[(cc, rr) for cc, rr in zip(centres, radii)],
        info={"num_lobes": n, "max_radius_mm": float(radii.max()), "place": place},
    )


def _make_bright_lesion(placer: Placer, kind: str) -> DarkObject | None:
    """What ageing brains add that is bright on T2*: a lacune (a small CSF-filled cavity, 3-15 mm, in deep white
    matter or the basal ganglia; dark on T1) or a white-matter hyperintensity (a faint periventricular patch).
    Negative darkening brightens."""
    rng = placer.rng
    lacune = kind == "lacune"
    c = placer.point_in("deep" if lacune else "periventricular")
    if c is None:
        return None
    semi = rng.uniform(1.5, 4.0, 3) if lacune else rng.uniform(3.0, 9.0, 3) * max(placer.params.scale, 0.45)
    if lacune and not placer.in_parenchyma(_shell(c, float(semi.max()) + 0.5), margin_mm=0.5):
        return None
    sigma = 0.4 if lacune else 1.5
    gain = rng.uniform(0.35, 0.8) if lacune else rng.uniform(0.08, 0.25)
    rot = random_rotation(rng, 180.0)
    return DarkObject(
        kind=kind, parts=[Part(c, float(semi.max()) + EDGE_REACH * sigma, ellipsoid_profile(c, rot, semi, sigma))],
        strength={"T2S": -gain, "T2": -gain * 1.5, "T1": gain * (0.8 if lacune else 0.2)},
        collision=[(c, float(semi.max()))], info={"semi_axes_mm": semi.round(3).tolist()},
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


def wide_world_makers(placer: Placer) -> list[Callable[[], DarkObject | None]]:
    """The wider world's extra objects for one subject, every count drawn at random: 3-30 pial veins, deep and
    sulcal veins, calcifications of the choroid plexus (often), pineal and falx, lacunes and white-matter
    hyperintensities (ageing brains)."""
    rng = placer.rng
    s = max(placer.params.scale, 0.45)
    vein_load = rng.uniform(0.2, 1.0)  # some subjects (SWI, high field) show many veins, others few
    makers: list[Callable[[], DarkObject | None]] = []
    makers += [lambda: _make_pial_vein(placer)] * int(rng.poisson(3.0 + 27.0 * vein_load * s))
    makers += [lambda: _make_vein(placer, "sulcal")] * int(rng.poisson(1.0 + 6.0 * vein_load * s))
    makers += [lambda: _make_vein(placer, "periventricular")] * int(rng.poisson(1.0 + 4.0 * vein_load * s))
    for place, p, most in (("choroid_plexus", 0.6, 4), ("pineal", 0.4, 2), ("falx", 0.2, 2)):
        makers += [lambda place=place: _make_csf_calcification(placer, place)] * (
            int(rng.random() < p) * int(rng.integers(1, most + 1)))
    ageing = rng.uniform(0.0, 1.0)
    makers += [lambda: _make_bright_lesion(placer, "lacune")] * int(rng.poisson(3.0 * ageing))
    makers += [lambda: _make_bright_lesion(placer, "wmh")] * int(rng.poisson(5.0 * ageing))
    return makers


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
    if placer.wide:  # the wider world: veins of every kind, calcifications where CMBs never lie, ageing
        makers += wide_world_makers(placer)
    mimic_objs: list[DarkObject] = []
    for make in makers:
        obj = _place(placer, make, attempts=20)
        if obj is not None:
            mimic_objs.append(obj)
    return mimic_objs
