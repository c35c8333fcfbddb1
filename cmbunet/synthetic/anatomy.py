"""A parametric brain phantom: smooth level-set fields that can be evaluated on any grid or point set.

The anatomy lives in its own millimetre frame ``q`` (x: left-right, y: posterior-anterior, z: inferior-superior,
origin at the brain centre). Every structure is an implicit function of ``q``, so the same parameters render a
coarse grid for the intensities, a fine grid for the brain mask, and single points when lesions are placed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

#: Tissue codes of :func:`tissue_labels`.
BACKGROUND, CSF, GM, WM, DEEP_GM = 0, 1, 2, 3, 4
TISSUES = ("csf", "gm", "wm", "deep_gm")

#: Mean contrast of each tissue per modality (relative units, before per-case jitter). T2*: CSF brightest,
#: GM > WM, deep grey nuclei close to GM unless iron-laden. T1: WM > GM > CSF. T2: CSF > GM > WM.
BASE_CONTRAST = {
    "T2S": {"csf": 1.00, "gm": 0.68, "wm": 0.52, "deep_gm": 0.64},
    "T1": {"csf": 0.22, "gm": 0.55, "wm": 0.85, "deep_gm": 0.66},
    "T2": {"csf": 1.00, "gm": 0.63, "wm": 0.45, "deep_gm": 0.55},
}

# Reference brain of an adult (semi-axes in mm); "small" phantoms shrink it but keep tissue thicknesses.
ADULT_SEMI_AXES_MM = np.array([67.0, 82.0, 60.0])
CORTEX_THICKNESS_MM = 2.5


@dataclass(frozen=True)
class AnatomyParams:
    """Everything that makes one brain differ from another."""

    semi_axes: np.ndarray  # (3,) mm
    harmonics: np.ndarray  # (9,) coefficients of the low-order shape deformation
    wave_k: np.ndarray  # (n, 3) rad/mm: gyral folding field
    wave_phase: np.ndarray  # (n,)
    sulcus_depth_mm: float
    cortex_mm: float
    sulcus_csf_halfwidth: float  # in units of the folding field
    ventricles: tuple[tuple[np.ndarray, np.ndarray, float], ...]  # (centre, semi-axes, bend mm)
    nuclei: tuple[tuple[str, np.ndarray, np.ndarray], ...]  # (name, centre, semi-axes)
    fissure_shift_mm: float
    texture_k: np.ndarray  # (m, 3) white-matter texture waves
    texture_phase: np.ndarray
    bias_coeffs: np.ndarray  # (9,) log bias-field polynomial

    @property
    def scale(self) -> float:
        return float(self.semi_axes[0] / ADULT_SEMI_AXES_MM[0])

    def tissue_fractions(self, co: "Coords", voxel_mm: float) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The brain-model interface shared with :class:`~cmbunet.synthetic.template.TemplateBrain`."""
        return tissue_fractions(self, co, voxel_mm)

    def tissue_labels(self, co: "Coords") -> tuple[np.ndarray, np.ndarray]:
        return tissue_labels(self, co)


def sample_anatomy(rng: np.random.Generator, size: str) -> AnatomyParams:
    """Draw a brain: overall size, shape harmonics, folding, ventricle size (atrophy) and deep nuclei."""
    if size == "small":
        a = rng.uniform(22.0, 27.0)
    else:
        a = rng.uniform(60.0, 72.0)
    semi = np.array([a, a * rng.uniform(1.15, 1.3), a * rng.uniform(0.82, 0.95)])
    s = a / ADULT_SEMI_AXES_MM[0]
    harmonics = rng.normal(0.0, 0.035, size=9)
    wavelength = rng.uniform(14.0, 20.0) * max(s, 0.55)
    n = 12
    dirs = rng.normal(size=(n, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    wave_k = dirs * (2 * np.pi / (wavelength * rng.uniform(0.8, 1.25, size=(n, 1))))
    cortex = CORTEX_THICKNESS_MM * rng.uniform(0.85, 1.15) * max(s, 0.75)
    sulcus_depth = rng.uniform(7.0, 12.0) * max(s, 0.5)
    k_mean = float(np.mean(np.linalg.norm(wave_k, axis=1)))
    csf_half = rng.uniform(0.4, 0.8) * k_mean  # ~0.4-0.8 mm half-width of CSF in a sulcus
    vsize = rng.uniform(0.8, 1.9)  # ventricular enlargement with age/atrophy
    ventricles = []
    for side in (-1.0, 1.0):
        c = np.array([side * semi[0] * rng.uniform(0.08, 0.12), semi[1] * rng.uniform(-0.05, 0.05), semi[2] * rng.uniform(0.12, 0.22)])
        sa = np.array([semi[0] * 0.055 * vsize, semi[1] * rng.uniform(0.28, 0.36), semi[2] * 0.1 * vsize])
        ventricles.append((c, sa, rng.uniform(0.15, 0.3) * semi[2]))
    nuclei = []
    for side in (-1.0, 1.0):
        j = lambda: rng.uniform(0.9, 1.1)  # noqa: E731
        nuclei.append(("lentiform", np.array([side * 0.27 * semi[0] * j(), 0.05 * semi[1] * j(), -0.02 * semi[2]]),
                       np.array([0.08 * semi[0], 0.16 * semi[1], 0.13 * semi[2]]) * j()))
        nuclei.append(("caudate", np.array([side * 0.15 * semi[0] * j(), 0.2 * semi[1] * j(), 0.14 * semi[2]]),
                       np.array([0.05 * semi[0], 0.09 * semi[1], 0.09 * semi[2]]) * j()))
        nuclei.append(("thalamus", np.array([side * 0.09 * semi[0] * j(), -0.13 * semi[1] * j(), 0.0]),
                       np.array([0.075 * semi[0], 0.12 * semi[1], 0.1 * semi[2]]) * j()))
    m = 10
    tdirs = rng.normal(size=(m, 3))
    tdirs /= np.linalg.norm(tdirs, axis=1, keepdims=True)
    texture_k = tdirs * (2 * np.pi / rng.uniform(4.0, 9.0, size=(m, 1)))
    return AnatomyParams(
        semi_axes=semi, harmonics=harmonics, wave_k=wave_k, wave_phase=rng.uniform(0, 2 * np.pi, n),
        sulcus_depth_mm=float(sulcus_depth), cortex_mm=float(cortex), sulcus_csf_halfwidth=float(csf_half),
        ventricles=tuple(ventricles), nuclei=tuple(nuclei), fissure_shift_mm=float(rng.normal(0, 1.0) * s),
        texture_k=texture_k, texture_phase=rng.uniform(0, 2 * np.pi, m),
        bias_coeffs=rng.normal(0.0, 0.12, size=9),
    )


def _monomials(ux, uy, uz) -> list[np.ndarray]:
    """First-, second- and one third-order term: the low-order 'harmonics' of shape and bias."""
    return [ux, uy, uz, ux * uy, uy * uz, ux * uz, ux * ux - uy * uy, 2 * uz * uz - ux * ux - uy * uy, ux * uy * uz]


class Coords:
    """Image-frame mm coordinates, either a sparse grid ((X,1,1), (1,Y,1), (1,1,Z)) or a point list ((N,) each).

    ``tilt`` maps anatomy to image frame (p = tilt @ q). Grids allow local evaluation of small structures on their
    bounding box only, which keeps the phantom fast on brain-sized volumes.
    """

    def __init__(self, px: np.ndarray, py: np.ndarray, pz: np.ndarray, tilt: np.ndarray):
        self.p = tuple(np.asarray(a, dtype=np.float32) for a in (px, py, pz))
        self.tilt = np.asarray(tilt, dtype=np.float32)
        self.is_grid = self.p[0].ndim == 3
        self.shape = np.broadcast_shapes(*(a.shape for a in self.p))

    @cached_property
    def q(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Anatomy-frame coordinates q = tilt^T p (full arrays)."""
        t, (px, py, pz) = self.tilt, self.p
        return tuple(t[0, i] * px + t[1, i] * py + t[2, i] * pz for i in range(3))

    def dot(self, k_anatomy: np.ndarray) -> np.ndarray:
        """k . q for an anatomy-frame wave vector, computed separably as (tilt k) . p."""
        kp = self.tilt @ np.asarray(k_anatomy, dtype=np.float32)
        return kp[0] * self.p[0] + kp[1] * self.p[1] + kp[2] * self.p[2]

    def local(self, centre_q: np.ndarray, radius: float) -> tuple[tuple, "Coords"] | tuple[None, None]:
        """Index into the full array and sub-coordinates of the box around an anatomy-frame point (grids only)."""
        if not self.is_grid:
            return (slice(None),), self
        c = self.tilt @ np.asarray(centre_q, dtype=np.float32)
        idx, sub = [], []
        for ax in range(3):
            a = self.p[ax].reshape(-1)
            lo, hi = np.searchsorted(a, [c[ax] - radius, c[ax] + radius])
            if hi <= lo:
                return None, None
            idx.append(slice(int(lo), int(hi)))
            shape = [1, 1, 1]
            shape[ax] = int(hi - lo)
            sub.append(a[lo:hi].reshape(shape))
        return tuple(idx), Coords(*sub, self.tilt)


def _soft(x: np.ndarray) -> np.ndarray:
    """Partial-volume fraction from a signed distance in voxel units (positive inside)."""
    return np.clip(np.float32(0.5) + x, 0.0, 1.0)


def brain_phi(p: AnatomyParams, co: Coords) -> np.ndarray:
    """Approximate signed distance to the brain surface in mm (negative inside)."""
    qx, qy, qz = co.q
    a, b, c = (np.float32(v) for v in p.semi_axes)
    ux, uy, uz = qx / a, qy / b, qz / c
    r = np.sqrt(ux * ux + uy * uy + uz * uz) + np.float32(1e-6)
    deform = sum(np.float32(coef) * t for coef, t in zip(p.harmonics, _monomials(ux / r, uy / r, uz / r)))
    # flatter base (skull base / temporal floor): compress the lower half a little
    flat = 1.0 + np.float32(0.12) * np.clip(-uz / r, 0, None) ** 2
    return ((r * flat / (1.0 + deform)) - 1.0) * np.float32(np.mean(p.semi_axes))


def _ellipsoid_mm(co: Coords, centre, semi, bend: float = 0.0) -> np.ndarray:
    """Approximate signed distance (mm, negative inside) to a banana-bent ellipsoid."""
    qx, qy, qz = co.q
    dy = (qy - np.float32(centre[1])) / np.float32(semi[1])
    dz = qz - np.float32(centre[2]) + np.float32(bend) * dy * dy
    lev = np.sqrt(((qx - np.float32(centre[0])) / np.float32(semi[0])) ** 2 + dy * dy + (dz / np.float32(semi[2])) ** 2)
    return (lev - 1.0) * np.float32(min(semi))


def _waves(k: np.ndarray, phase: np.ndarray, co: Coords) -> np.ndarray:
    out = np.zeros(co.shape, dtype=np.float32)
    for kk, ph in zip(k, phase):
        out += np.cos(co.dot(kk) + np.float32(ph))
    return out * np.float32(np.sqrt(2.0 / len(k)))


def tissue_fractions(p: AnatomyParams, co: Coords, voxel_mm: float) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Partial-volume fractions of CSF, GM and deep GM (WM is the rest) and the brain signed distance (mm).

    ``voxel_mm`` sets the width of the partial-volume transition; ~0 gives hard labels (for point tests).
    """
    h = np.float32(max(voxel_mm, 1e-3))
    phi = brain_phi(p, co)
    depth = -phi
    fold = _waves(p.wave_k, p.wave_phase, co)
    k_mean = np.float32(np.mean(np.linalg.norm(p.wave_k, axis=1)))
    afold_mm = np.abs(fold) / k_mean  # ~distance to the nearest sulcal mid-plane
    sdepth = np.float32(p.sulcus_depth_mm) * (0.6 + 0.4 * np.cos(fold * np.float32(1.7) + np.float32(0.5)))
    half_csf = np.float32(p.sulcus_csf_halfwidth / k_mean)
    cortex = np.float32(p.cortex_mm)
    gm = np.maximum(_soft((cortex - depth) / h),
                    _soft((half_csf + cortex - afold_mm) / h) * _soft((sdepth + cortex - depth) / h))
    csf = np.maximum(_soft((np.float32(0.6) - depth) / h), _soft((half_csf - afold_mm) / h) * _soft((sdepth - depth) / h))
    a, _, c = p.semi_axes
    qx, _, qz = co.q
    fissure = _soft((np.float32(0.9) - np.abs(qx - np.float32(p.fissure_shift_mm))) / h)
    csf = np.maximum(csf, fissure * _soft((qz + np.float32(0.15 * c)) / h) * _soft((np.float32(0.55 * c) - depth) / h))
    deep = np.zeros(co.shape, dtype=np.float32)
    for centre, semi, bend in p.ventricles:
        idx, sub = co.local(centre, float(max(semi) + bend + 2 * h))
        if idx is not None:
            csf[idx] = np.maximum(csf[idx], _soft(-_ellipsoid_mm(sub, centre, semi, bend) / h))
    for _, centre, semi in p.nuclei:
        idx, sub = co.local(centre, float(max(semi) + 2 * h))
        if idx is not None:
            deep[idx] = np.maximum(deep[idx], _soft(-_ellipsoid_mm(sub, centre, semi) / h))
    deep *= 1.0 - csf
    gm = np.minimum(gm, 1.0 - csf - deep)
    return {"csf": csf, "gm": gm, "deep_gm": deep}, phi


def tissue_labels(p: AnatomyParams, co: Coords) -> tuple[np.ndarray, np.ndarray]:
    """Hard tissue codes (0 outside the brain) and the brain signed distance, e.g. to test lesion positions."""
    frac, phi = tissue_fractions(p, co, voxel_mm=0.0)
    return labels_from_fractions(frac, phi), phi


def labels_from_fractions(frac: dict[str, np.ndarray], phi: np.ndarray) -> np.ndarray:
    """Dominant tissue per voxel (CSF, then deep GM, then GM against WM), 0 outside the brain."""
    csf, deep, gm = frac["csf"], frac["deep_gm"], frac["gm"]
    labels = np.full(np.broadcast_shapes(csf.shape, phi.shape), WM, dtype=np.uint8)
    labels[gm > 0.5 * (1.0 - csf - deep)] = GM
    labels[deep >= 0.5] = DEEP_GM
    labels[csf >= 0.5] = CSF
    labels[np.broadcast_to(phi >= 0, labels.shape)] = BACKGROUND
    return labels


def intensity(frac: dict[str, np.ndarray], contrast: dict[str, float]) -> np.ndarray:
    """Signal as the partial-volume mixture of tissue contrasts."""
    wm = 1.0 - frac["csf"] - frac["gm"] - frac["deep_gm"]
    out = np.float32(contrast["wm"]) * wm
    for t in ("csf", "gm", "deep_gm"):
        out += np.float32(contrast[t]) * frac[t]
    return out


def white_matter_texture(p: AnatomyParams, co: Coords) -> np.ndarray:
    """Small smooth intensity variations (about ±3%) so tissue is not piecewise constant."""
    return 1.0 + np.float32(0.03) * _waves(p.texture_k, p.texture_phase, co)


def bias_field(p: AnatomyParams, co: Coords) -> np.ndarray:
    """Smooth multiplicative coil-sensitivity field: exp of a low-order polynomial over the head."""
    a, b, c = (np.float32(v) for v in p.semi_axes * 1.2)
    qx, qy, qz = co.q
    log_b = sum(np.float32(coef) * t for coef, t in zip(p.bias_coeffs, _monomials(qx / a, qy / b, qz / c)))
    return np.exp(log_b).astype(np.float32)
