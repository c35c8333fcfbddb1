"""Real brain anatomy for synthetic cases: the MNI ICBM152 2009 template, warped differently for every subject.

The parametric phantom of :mod:`cmbunet.synthetic.anatomy` has ellipsoidal ventricles and sinusoidal sulci; a
detector trained on it alone learns that world. Real cohorts have real sulci, a real ventricular system,
basal ganglia, a cerebellum and a brainstem. The grey- and white-matter probability maps of the ICBM152 2009
symmetric template ship inside the ``nilearn`` package (1 mm, skull-stripped), so they are available offline.

A :class:`TemplateBrain` offers the same interface as the phantom's :class:`~cmbunet.synthetic.anatomy.AnatomyParams`
(``tissue_fractions``, ``tissue_labels``, ``semi_axes``, ``nuclei`` ...), so the generator renders either. Every
subject differs through a per-axis scale (head size), a smooth random displacement field (shape), ventricular
enlargement (atrophy) and its own bias field and texture.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from cmbunet.errors import CMBUNetError
from cmbunet.synthetic import anatomy as anat

TEMPLATE_FILES = {t: f"mni_icbm152_{t}_tal_nlin_sym_09a_converted.nii.gz" for t in ("t1", "gm", "wm")}
#: Centre of the deep grey nuclei (basal ganglia and thalami) in template mm relative to the brain centre, and
#: the half-widths of the box that holds them; outside it, grey matter is cortex.
DEEP_BOX_CENTRE_MM = np.array([0.0, 6.0, -4.0])
DEEP_BOX_HALF_MM = np.array([32.0, 30.0, 20.0])
#: Putamen/pallidum centres (template mm relative to the brain centre): where iron-rich nuclei are reported.
LENTIFORM_MM = np.array([[-22.0, 14.0, -8.0], [22.0, 14.0, -8.0]])
#: Lateral ventricles (template mm relative to the brain centre): the centre of atrophy-driven enlargement.
VENTRICLE_CENTRE_MM = np.array([0.0, 2.0, 10.0])


def template_folder() -> Path:
    """Folder of the template files inside the installed ``nilearn`` package (no import of nilearn itself)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise CMBUNetError("template anatomy needs the 'nilearn' package (it ships the MNI152 template); "
                           "pip install nilearn, or use --anatomy phantom")
    folder = Path(spec.origin).parent / "datasets" / "data"
    missing = [f for f in TEMPLATE_FILES.values() if not (folder / f).is_file()]
    if missing:
        raise CMBUNetError(f"the installed nilearn lacks the template files {missing} in {folder}")
    return folder


@dataclass(frozen=True)
class TemplateMaps:
    """Tissue maps on the (cropped) 1 mm template grid, indexed (x: left-right, y: posterior-anterior, z: up)."""

    csf: np.ndarray
    gm: np.ndarray
    deep_gm: np.ndarray
    wm: np.ndarray
    phi: np.ndarray  # signed distance to the brain surface, mm, negative inside
    centre_vox: np.ndarray  # brain centre in grid voxels (the origin of template mm coordinates)
    half_extent_mm: np.ndarray  # half the brain's bounding box


@lru_cache(maxsize=1)
def load_template_maps() -> TemplateMaps:
    """Read the template once per process and derive CSF, deep grey matter and the signed distance."""
    import SimpleITK as sitk

    folder = template_folder()

    def read(t: str) -> np.ndarray:
        img = sitk.ReadImage(str(folder / TEMPLATE_FILES[t]))
        return (sitk.GetArrayFromImage(img).transpose(2, 1, 0).astype(np.float32) / 255.0)

    t1, gm, wm = read("t1"), read("gm"), read("wm")
    brain = ndimage.binary_fill_holes(t1 > 0.02)
    idx = np.argwhere(brain)
    lo, hi = np.maximum(idx.min(0) - 6, 0), np.minimum(idx.max(0) + 7, brain.shape)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    t1, gm, wm, brain = t1[crop], gm[crop], wm[crop], brain[crop]
    gm = gm * brain
    wm = wm * brain
    csf = np.clip(brain.astype(np.float32) - gm - wm, 0.0, 1.0)
    inside = ndimage.distance_transform_edt(brain)
    outside = ndimage.distance_transform_edt(~brain)
    phi = (outside - inside).astype(np.float32)
    box = np.argwhere(brain)
    centre = (box.min(0) + box.max(0)) / 2.0
    half = (box.max(0) - box.min(0) + 1) / 2.0
    # deep grey matter: grey matter inside the central box and far from the surface (not insular cortex)
    coords = np.meshgrid(*[np.arange(n, dtype=np.float32) - c for n, c in zip(brain.shape, centre)],
                         indexing="ij", sparse=True)
    u = sum(((x - c) / h) ** 2 for x, c, h in zip(coords, DEEP_BOX_CENTRE_MM, DEEP_BOX_HALF_MM))
    deep_weight = np.clip((1.0 - u) * 4.0, 0.0, 1.0) * np.clip((-phi - 18.0) / 6.0, 0.0, 1.0)
    deep = (gm * deep_weight).astype(np.float32)
    gm = (gm - deep).astype(np.float32)
    return TemplateMaps(csf=csf, gm=gm, deep_gm=deep, wm=wm, phi=phi, centre_vox=centre.astype(np.float32),
                        half_extent_mm=half.astype(np.float32))


@dataclass(frozen=True)
class TemplateBrain:
    """One subject's brain: the template seen through a scale, a smooth warp and ventricular enlargement.

    Coordinates are the anatomy frame ``q`` of the phantom (mm, origin at the brain centre); the template point
    sampled for ``q`` is ``m = q / scale_xyz + warp(q) - atrophy(q)``.
    """

    scale_xyz: np.ndarray  # (3,) head size per axis relative to the template
    warp_k: np.ndarray  # (n, 3) rad/mm
    warp_amp: np.ndarray  # (n, 3) mm
    warp_phase: np.ndarray  # (n,)
    atrophy: float  # ventricular enlargement, 0 = none
    texture_k: np.ndarray
    texture_phase: np.ndarray
    bias_coeffs: np.ndarray
    cortex_mm: float = anat.CORTEX_THICKNESS_MM

    @property
    def semi_axes(self) -> np.ndarray:
        return load_template_maps().half_extent_mm * self.scale_xyz

    @property
    def scale(self) -> float:
        return float(self.semi_axes[0] / anat.ADULT_SEMI_AXES_MM[0])

    @property
    def nuclei(self) -> tuple[tuple[str, np.ndarray, np.ndarray], ...]:
        return tuple(("lentiform", c * self.scale_xyz, np.array([6.0, 12.0, 9.0]) * self.scale_xyz)
                     for c in LENTIFORM_MM)

    def _template_points(self, co: anat.Coords) -> list[np.ndarray]:
        qx, qy, qz = co.q
        q = [qx, qy, qz]
        m = [q[i] / np.float32(self.scale_xyz[i]) for i in range(3)]
        for k, amp, ph in zip(self.warp_k, self.warp_amp, self.warp_phase):
            w = np.cos(sum(np.float32(k[i]) * m[i] for i in range(3)) + np.float32(ph))
            m = [m[i] + np.float32(amp[i]) * w for i in range(3)]
        if self.atrophy > 0:
            d = [m[i] - np.float32(VENTRICLE_CENTRE_MM[i]) for i in range(3)]
            pull = np.float32(self.atrophy) * np.exp(-(d[0] ** 2 + d[1] ** 2 + d[2] ** 2) / np.float32(2 * 22.0**2))
            m = [m[i] - pull * d[i] for i in range(3)]
        return m

    def tissue_fractions(self, co: anat.Coords, voxel_mm: float = 1.0) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Partial-volume fractions of CSF, GM and deep GM (WM is the rest) and the brain signed distance (mm).

        Trilinear sampling of the 1 mm template already carries its partial volume; ``voxel_mm`` is accepted
        for interface parity with the phantom.
        """
        maps = load_template_maps()
        m = self._template_points(co)
        shape = np.broadcast_shapes(*(a.shape for a in m))
        pts = np.stack([np.broadcast_to(m[i] + maps.centre_vox[i], shape).reshape(-1) for i in range(3)])
        sample = lambda a, cval: ndimage.map_coordinates(a, pts, order=1, mode="constant", cval=cval  # noqa: E731
                                                         ).reshape(shape).astype(np.float32)
        phi = sample(maps.phi, 50.0)
        frac = {"csf": sample(maps.csf, 0.0), "gm": sample(maps.gm, 0.0), "deep_gm": sample(maps.deep_gm, 0.0)}
        wm = sample(maps.wm, 0.0)
        # make the four fractions sum to one inside the brain (white matter is "the rest" downstream)
        total = frac["csf"] + frac["gm"] + frac["deep_gm"] + wm
        norm = np.where(total > 1e-3, 1.0 / np.maximum(total, 1e-3), 0.0).astype(np.float32)
        for t in frac:
            frac[t] *= norm
        frac["csf"] = np.where(total > 1e-3, frac["csf"], 1.0).astype(np.float32)
        return frac, phi

    def tissue_labels(self, co: anat.Coords) -> tuple[np.ndarray, np.ndarray]:
        frac, phi = self.tissue_fractions(co)
        return anat.labels_from_fractions(frac, phi), phi


def sample_template_brain(rng: np.random.Generator, size: str) -> TemplateBrain:
    """Draw a subject: head size, a smooth warp of a few millimetres, atrophy, bias and texture."""
    base = 1.0 if size == "realistic" else 0.36  # "small" brains fit a ~64^3 test volume
    scale = base * rng.uniform(0.88, 1.08) * rng.uniform(0.96, 1.04, 3)
    n = 6
    dirs = rng.normal(size=(n, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    warp_k = dirs * (2 * np.pi / rng.uniform(50.0, 110.0, (n, 1)))
    warp_amp = rng.normal(0.0, 1.6, (n, 3))
    m = 10
    tdirs = rng.normal(size=(m, 3))
    tdirs /= np.linalg.norm(tdirs, axis=1, keepdims=True)
    return TemplateBrain(
        scale_xyz=scale.astype(float), warp_k=warp_k, warp_amp=warp_amp, warp_phase=rng.uniform(0, 2 * np.pi, n),
        atrophy=float(rng.uniform(0.0, 0.3)),
        texture_k=tdirs * (2 * np.pi / rng.uniform(4.0, 9.0, size=(m, 1))), texture_phase=rng.uniform(0, 2 * np.pi, m),
        bias_coeffs=rng.normal(0.0, 0.12, size=9),
    )
