"""Synthetic skull-stripped T2*-weighted cases with labelled cerebral microbleeds and unlabelled mimics.

A case is built in four steps: draw the acquisition (spacing, oblique direction, origin, intensity scale, SNR;
:mod:`cmbunet.synthetic.rendering`), draw a brain (:mod:`cmbunet.synthetic.anatomy`), place microbleeds and
mimics that never touch each other (:mod:`cmbunet.synthetic.placement`, :mod:`cmbunet.synthetic.lesions`), then
render: tissue contrast x bias field, PSF blur, lesion darkening, Rician noise, and zero outside the brain.
Everything follows from one integer seed. :mod:`cmbunet.synthetic.writer` writes cases as a dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

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
from cmbunet.synthetic.template import sample_template_brain

SIZES = ("small", "realistic")
#: Worlds of the cases drawn from a site: ``wide`` (default) adds veins of every kind, calcifications in CSF,
#: ageing, small microbleeds, slice profiles and CSF brightness (documentation/synthetic_data.md); ``narrow`` is
#: the multi-site world before them, kept so that figures measured on it can be reproduced.
WORLDS = ("wide", "narrow")
#: Brain models: the parametric phantom, the warped MNI152 template, or by size (template for realistic cases).
ANATOMIES = ("auto", "phantom", "template")

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
    site_names = None if (sites is None and size == "small") else parse_sites(sites)
    if anatomy == "auto":
        anatomy = "template" if size == "realistic" else "phantom"
    rng = np.random.default_rng(seed)

    # acquisition and anatomy
    params = sample_template_brain(rng, size) if anatomy == "template" else anat.sample_anatomy(rng, size)
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

    # tissue on the anatomy grid
    _, factors, axes = anatomy_grid(grid)
    co = anat.Coords(*np.meshgrid(*axes, indexing="ij", sparse=True), tilt)
    coarse_mm = float(np.mean(grid.spacing * factors))
    frac, phi = tissue_on_grid(params, axes, tilt, grid.spacing * factors, coarse_mm)
    labels = anat.labels_from_fractions(frac, phi)
    bias = anat.bias_field(params, co)
    if acq:
        bias = bias ** np.float32(acq["bias_scale"])
    shading = bias * anat.white_matter_texture(params, co)

    # objects
    placer = Placer(rng, params, co, grid, labels, phi, axes, appearance=acq, wide=bool(acq) and world == "wide")
    cmb_objs = place_cmbs(placer, draw_num_cmbs(rng) if num_cmbs is None else int(num_cmbs))
    if num_cmbs is not None and len(cmb_objs) < num_cmbs:
        raise InvalidValueError(f"could only place {len(cmb_objs)} of {num_cmbs} microbleeds in the brain of seed {seed}")
    mimic_objs = place_mimics(placer, multi_site=bool(acq))

    # rendering
    samples = supersampling(grid)
    profile = acq.get("slice_profile", 1.0) if acq else 1.0
    rendered = [(o, render_object(grid, o, samples, profile)) for o in cmb_objs + mimic_objs]
    phi_full = upsample(phi, factors, grid.shape)
    brain = phi_full < 0
    images = {}
    for m in modalities:
        c = contrasts[m]
        img = anat.intensity(frac, c) * shading  # outside is CSF-like, so the blur keeps a bright rim
        img = ndimage.gaussian_filter(img, psf_sigma_vox / factors, mode="nearest")
        img = upsample(img, factors, grid.shape)
        for obj, r in rendered:
            if r is not None:
                sl, dark = r
                img[sl] *= 1.0 - np.float32(obj.strength[m]) * dark
        images[m] = acquire(img[brain], brain, sigma=float(c["wm"]) / snr[m], scale=scale, offset=offset,
                            rng=np.random.default_rng([int(seed), 11 + MODALITIES.index(m)]))

    label = np.zeros(grid.shape, dtype=np.uint8)
    props: ImageProperties = {
        "spacing": [float(v) for v in spacing],
        "origin": [float(v) for v in origin],
        "direction": [float(v) for v in direction.reshape(-1)],
        "shape": [int(v) for v in grid.shape],
    }
    to_world = lambda p: (origin + direction @ (grid.to_voxel(p) * spacing)).tolist()  # noqa: E731
    cmbs = []
    for obj in cmb_objs:
        c = obj.parts[0].centre
        sl, inside = sphere_label(grid, c, obj.info["radius_mm"])
        label[sl][inside] = 1
        cmbs.append({"center_world_mm": to_world(c), "center_voxel": grid.to_voxel(c).tolist(),
                     "radius_mm": obj.info["radius_mm"], "region": obj.info["region"],
                     "num_voxels": int(inside.sum())})
    mimics = []
    for obj in mimic_objs:
        c = np.mean([cc for cc, _ in obj.collision], axis=0)
        mimics.append({"kind": obj.kind, "center_world_mm": to_world(c), "center_voxel": grid.to_voxel(c).tolist(), **obj.info})
    if iron:
        for name, centre, _ in params.nuclei:
            if name == "lentiform":
                p = tilt @ centre
                mimics.append({"kind": "iron_deep_gm", "center_world_mm": to_world(p), "center_voxel": grid.to_voxel(p).tolist()})
    meta = {"seed": int(seed), "size": size, "site": site, "anatomy": anatomy, "snr": {m: snr[m] for m in modalities}, "intensity_scale": scale,
            "iron_deep_gm": iron, "head_tilt": tilt.round(6).tolist(),
            "slice_profile": float(profile), "world": world if acq else "quick-test"}
    return SyntheticCase(images=images, label=label, props=props, cmbs=cmbs, mimics=mimics, brain=brain, meta=meta)

