"""Synthetic skull-stripped T2*-weighted cases with labelled cerebral microbleeds and unlabelled mimics.

A case is built in four steps: draw the acquisition (spacing, oblique direction, origin, intensity scale, SNR;
:mod:`cmbunet.synthetic.rendering`), draw a brain (:mod:`cmbunet.synthetic.anatomy`), place microbleeds and
mimics that never touch each other (:mod:`cmbunet.synthetic.placement`, :mod:`cmbunet.synthetic.lesions`), then
render: tissue contrast x bias field, PSF blur, lesion darkening, Rician noise, and zero outside the brain.
Everything follows from one integer seed. :mod:`cmbunet.synthetic.writer` writes cases as a dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence, Union

import numpy as np
from scipy import ndimage

from cmbunet.errors import InvalidValueError
from cmbunet.imageio import ImageProperties
from cmbunet.synthetic import anatomy as anat
from cmbunet.synthetic.lesions import Grid, render_object, sphere_label, supersampling
from cmbunet.synthetic.placement import MAX_CMBS, Placer, num_cmbs as draw_num_cmbs, place_cmbs, place_mimics
from cmbunet.synthetic.rendering import (
    MODALITIES,
    acquire,
    anatomy_grid,
    grid_shape,
    modality_rng,
    random_rotation,
    small_spacing,
    tissue_contrasts,
    tissue_on_grid,
    upsample,
)
from cmbunet.synthetic.sites import SITES, parse_sites
from cmbunet.synthetic.template import TemplateBrain, sample_template_brain

SIZES = ("small", "realistic")
#: Worlds of the cases drawn from a site: ``wide`` (default) adds veins of every kind, calcifications in CSF,
#: ageing, small microbleeds, slice profiles and CSF brightness (documentation/synthetic_data.md); ``narrow`` is
#: the multi-site world before them, kept so that figures measured on it can be reproduced.
WORLDS = ("wide", "narrow")
#: Brain models: the parametric phantom, the warped MNI152 template, or by size (template for realistic cases).
ANATOMIES = ("auto", "phantom", "template")

#: A brain model: the parametric phantom or the warped template (one interface).
Brain = Union[anat.AnatomyParams, TemplateBrain]

__all__ = ["ANATOMIES", "MAX_CMBS", "MODALITIES", "SIZES", "WORLDS", "SyntheticCase", "synthesize_case"]


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


@dataclass
class _Scan:
    """How one case is acquired: site, grid, head pose, contrasts, intensity scale, noise and blur."""

    site: str
    acq: dict | None  # the site's draw; None in the quick-test world
    spacing: np.ndarray
    tilt: np.ndarray  # head position in the scanner
    grid: Grid
    direction: np.ndarray
    origin: np.ndarray
    iron: bool  # iron-rich deep grey matter
    contrasts: dict[str, dict[str, float]]
    scale: float
    offset: float
    snr: dict[str, float]
    psf_sigma_vox: float

    @property
    def slice_profile(self) -> float:
        return self.acq.get("slice_profile", 1.0) if self.acq else 1.0

    def to_world(self, p: np.ndarray) -> list[float]:
        """World coordinates (mm) of the image-frame point ``p``."""
        return (self.origin + self.direction @ (self.grid.to_voxel(p) * self.spacing)).tolist()


@dataclass
class _Tissue:
    """The brain on the coarse anatomy grid: fractions, signed distance, labels and shading."""

    factors: np.ndarray
    axes: list[np.ndarray]
    coords: anat.Coords
    frac: dict[str, np.ndarray]
    phi: np.ndarray
    labels: np.ndarray
    shading: np.ndarray


def _check_arguments(size: str, num_cmbs: int | None, modalities: Sequence[str], anatomy: str, world: str) -> None:
    if world not in WORLDS:
        raise InvalidValueError(f"world must be one of {WORLDS}, got {world!r}")
    if size not in SIZES:
        raise InvalidValueError(f"size must be one of {SIZES}, got {size!r}")
    if anatomy not in ANATOMIES:
        raise InvalidValueError(f"anatomy must be one of {ANATOMIES}, got {anatomy!r}")
    bad = [m for m in modalities if m not in MODALITIES]
    if bad or not modalities:
        raise InvalidValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {list(modalities)}")
    if num_cmbs is not None and not 0 <= num_cmbs <= MAX_CMBS:
        raise InvalidValueError(f"num_cmbs must lie in [0, {MAX_CMBS}], got {num_cmbs}")


def _draw_scan(rng: np.random.Generator, seed: int, params: Brain, size: str,
               site_names: Sequence[str] | None, modalities: Sequence[str], world: str) -> _Scan:
    """The acquisition of the case, drawn from ``rng`` after the anatomy ``params``."""
    if site_names is None:
        site, acq = "small", None
        spacing = small_spacing(rng)
    else:
        site = str(site_names[int(rng.integers(len(site_names)))])
        acq = SITES[site].draw(rng)
        spacing = acq["spacing"]
        if world == "wide":  # drawn from a stream of their own, so the narrow world's draws stay as they were
            extra = np.random.default_rng([int(seed), 2026])
            # share of the slice a thin object is averaged over: box-shaped (1) to sharp (0.25) slice profiles
            acq["slice_profile"] = float(extra.uniform(0.25, 1.0))
            acq["csf_gain"] = float(extra.uniform(0.8, 1.2))
    tilt = random_rotation(rng, 10.0)  # head position in the scanner
    grid = Grid(grid_shape(params.semi_axes, tilt, spacing, size), spacing)
    lo_deg, hi_deg = acq["oblique_deg"] if acq else (3.0, 20.0)
    direction = random_rotation(rng, hi_deg, min_deg=lo_deg)  # oblique acquisition
    origin = -direction @ grid.centre_mm + rng.normal(0, 15.0, 3)
    iron = bool(rng.random() < 0.35)
    contrasts = tissue_contrasts(seed, modalities, iron, acq["gm_wm_gain"] if acq else 1.0)
    if acq and "csf_gain" in acq:  # CSF's brightness against tissue differs with echo time and sequence
        for m in modalities:
            contrasts[m]["csf"] *= acq["csf_gain"]
    scale = float(10 ** rng.uniform(1.5, 3.3))
    offset = float(rng.uniform(0.0, 0.05))
    if acq:  # the site sets the SNR; contrasts differ a little around it
        snr = {m: acq["snr"] * float(modality_rng(seed, m).uniform(0.85, 1.15)) for m in MODALITIES}
        psf_sigma_vox = acq["psf_sigma_vox"]
    else:
        snr = {m: float(modality_rng(seed, m).uniform(12.0, 40.0)) for m in MODALITIES}
        psf_sigma_vox = rng.uniform(0.3, 0.6)
    return _Scan(site, acq, spacing, tilt, grid, direction, origin, iron, contrasts, scale, offset, snr,
                 psf_sigma_vox)


def _tissue(params: Brain, scan: _Scan) -> _Tissue:
    """Tissue fractions, labels and shading (bias field x white-matter texture) on the anatomy grid."""
    _, factors, axes = anatomy_grid(scan.grid)
    co = anat.Coords(*np.meshgrid(*axes, indexing="ij", sparse=True), scan.tilt)
    coarse_mm = float(np.mean(scan.grid.spacing * factors))
    frac, phi = tissue_on_grid(params, axes, scan.tilt, scan.grid.spacing * factors, coarse_mm)
    labels = anat.labels_from_fractions(frac, phi)
    bias = anat.bias_field(params, co)
    if scan.acq:
        bias = bias ** np.float32(scan.acq["bias_scale"])
    return _Tissue(factors, axes, co, frac, phi, labels, bias * anat.white_matter_texture(params, co))


def _render(seed: int, scan: _Scan, tissue: _Tissue, objects: list, modalities: Sequence[str],
            brain: np.ndarray) -> dict[str, np.ndarray]:
    """The image of each modality: contrast x shading, PSF blur, lesion darkening, Rician noise."""
    grid, factors = scan.grid, tissue.factors
    samples = supersampling(grid)
    rendered = [(o, render_object(grid, o, samples, scan.slice_profile)) for o in objects]
    images = {}
    for m in modalities:
        c = scan.contrasts[m]
        img = anat.intensity(tissue.frac, c) * tissue.shading  # outside is CSF-like, so the blur keeps a bright rim
        img = ndimage.gaussian_filter(img, scan.psf_sigma_vox / factors, mode="nearest")
        img = upsample(img, factors, grid.shape)
        for obj, r in rendered:
            if r is not None:
                sl, dark = r
                img[sl] *= 1.0 - np.float32(obj.strength[m]) * dark
        images[m] = acquire(img[brain], brain, sigma=float(c["wm"]) / scan.snr[m], scale=scan.scale,
                            offset=scan.offset, rng=np.random.default_rng([int(seed), 11 + MODALITIES.index(m)]))
    return images


def _ground_truth(scan: _Scan, params: Brain, cmb_objs: list,
                  mimic_objs: list) -> tuple[np.ndarray, list[dict], list[dict]]:
    """The label map and the records of every microbleed and mimic (iron-rich nuclei included)."""
    grid = scan.grid
    label = np.zeros(grid.shape, dtype=np.uint8)
    cmbs = []
    for obj in cmb_objs:
        c = obj.parts[0].centre
        sl, inside = sphere_label(grid, c, obj.info["radius_mm"])
        label[sl][inside] = 1
        cmbs.append({"center_world_mm": scan.to_world(c), "center_voxel": grid.to_voxel(c).tolist(),
                     "radius_mm": obj.info["radius_mm"], "region": obj.info["region"],
                     "num_voxels": int(inside.sum())})
    mimics = []
    for obj in mimic_objs:
        c = np.mean([cc for cc, _ in obj.collision], axis=0)
        mimics.append({"kind": obj.kind, "center_world_mm": scan.to_world(c), "center_voxel": grid.to_voxel(c).tolist(),
                       **obj.info})
    if scan.iron:
        for name, centre, _ in params.nuclei:
            if name == "lentiform":
                p = scan.tilt @ centre
                mimics.append({"kind": "iron_deep_gm", "center_world_mm": scan.to_world(p),
                               "center_voxel": grid.to_voxel(p).tolist()})
    return label, cmbs, mimics


def synthesize_case(
    seed: int,
    size: str = "small",
    num_cmbs: int | None = None,
    modalities: Sequence[str] = ("T2S",),
    anatomy: str = "auto",
    sites: Sequence[str] | str | None = None,
    world: str = "wide",
) -> SyntheticCase:
    """Generate one case from ``seed`` (same seed, same arrays). ``num_cmbs`` forces the microbleed count.

    ``anatomy``: ``phantom`` (parametric), ``template`` (warped MNI152) or ``auto`` (template for realistic
    cases, phantom for small ones). ``sites``: acquisition sites to draw from (:mod:`cmbunet.synthetic.sites`);
    realistic cases default to the whole catalogue. Small cases without named sites keep the quick-test world
    (0.8-1.3 mm pixels, 1-2.5 mm slices, fewer mimic kinds) that the test suite's learning bars were set on.
    ``world``: see :data:`WORLDS` (cases drawn from a site only).
    """
    _check_arguments(size, num_cmbs, modalities, anatomy, world)
    site_names = None if (sites is None and size == "small") else parse_sites(sites)
    if anatomy == "auto":
        anatomy = "template" if size == "realistic" else "phantom"
    rng = np.random.default_rng(seed)
    params = sample_template_brain(rng, size) if anatomy == "template" else anat.sample_anatomy(rng, size)
    scan = _draw_scan(rng, seed, params, size, site_names, modalities, world)
    tissue = _tissue(params, scan)

    placer = Placer(rng, params, tissue.coords, scan.grid, tissue.labels, tissue.phi, tissue.axes,
                    appearance=scan.acq, wide=bool(scan.acq) and world == "wide")
    cmb_objs = place_cmbs(placer, draw_num_cmbs(rng) if num_cmbs is None else int(num_cmbs))
    if num_cmbs is not None and len(cmb_objs) < num_cmbs:
        raise InvalidValueError(f"could only place {len(cmb_objs)} of {num_cmbs} microbleeds in the brain of seed {seed}")
    mimic_objs = place_mimics(placer, multi_site=bool(scan.acq))

    brain = upsample(tissue.phi, tissue.factors, scan.grid.shape) < 0
    images = _render(seed, scan, tissue, cmb_objs + mimic_objs, modalities, brain)
    label, cmbs, mimics = _ground_truth(scan, params, cmb_objs, mimic_objs)
    props: ImageProperties = {
        "spacing": [float(v) for v in scan.spacing],
        "origin": [float(v) for v in scan.origin],
        "direction": [float(v) for v in scan.direction.reshape(-1)],
        "shape": [int(v) for v in scan.grid.shape],
    }
    meta = {"seed": int(seed), "size": size, "site": scan.site, "anatomy": anatomy,
            "snr": {m: scan.snr[m] for m in modalities}, "intensity_scale": scan.scale, "iron_deep_gm": scan.iron,
            "head_tilt": scan.tilt.round(6).tolist(), "slice_profile": float(scan.slice_profile),
            "world": world if scan.acq else "quick-test"}
    return SyntheticCase(images=images, label=label, props=props, cmbs=cmbs, mimics=mimics, brain=brain, meta=meta)
