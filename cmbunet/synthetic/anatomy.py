"""A parametric brain phantom: smooth level-set fields that can be evaluated on any grid or point set.

The anatomy lives in its own millimetre frame ``q`` (x: left-right, y: posterior-anterior, z: inferior-superior,
origin at the brain centre). Every structure is an implicit function of ``q``, so the same parameters render a
coarse grid for the intensities, a fine grid for the brain mask, and single points when lesions are placed.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    n = 14
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


def _monomials(ux: np.ndarray, uy: np.ndarray, uz: np.ndarray) -> list[np.ndarray]:
    """First- and second-order terms: the low-order 'harmonics' of shape and bias."""
    return [ux, uy, uz, ux * uy, uy * uz, ux * uz, ux * ux - uy * uy, 2 * uz * uz - ux * ux - uy * uy, ux * uy * uz]


def brain_phi(p: AnatomyParams, qx: np.ndarray, qy: np.ndarray, qz: np.ndarray) -> np.ndarray:
    """Approximate signed distance to the brain surface in mm (negative inside)."""
    a, b, c = p.semi_axes
    ux, uy, uz = qx / a, qy / b, qz / c
    r = np.sqrt(ux * ux + uy * uy + uz * uz) + 1e-6
    deform = sum(coef * t for coef, t in zip(p.harmonics, _monomials(ux / r, uy / r, uz / r)))
    # flatter base (skull base / temporal floor): compress the lower half a little
    flat = 1.0 + 0.12 * np.clip(-uz / r, 0, None) ** 2
    return ((r * flat / (1.0 + deform)) - 1.0) * float(np.mean(p.semi_axes))


def _ellipsoid_level(qx, qy, qz, centre, semi, bend: float = 0.0) -> np.ndarray:
    """< 0 inside a (banana-bent) ellipsoid; roughly distance in units of the smallest semi-axis."""
    dy = (qy - centre[1]) / semi[1]
    dz = qz - centre[2] + bend * dy * dy
    return np.sqrt(((qx - centre[0]) / semi[0]) ** 2 + dy * dy + (dz / semi[2]) ** 2) - 1.0


def _waves(k: np.ndarray, phase: np.ndarray, qx, qy, qz) -> np.ndarray:
    out = np.zeros(np.broadcast_shapes(np.shape(qx), np.shape(qy), np.shape(qz)), dtype=np.float32)
    for kk, ph in zip(k, phase):
        out += np.cos(kk[0] * qx + kk[1] * qy + kk[2] * qz + ph, dtype=np.float32)
    return out * np.float32(np.sqrt(2.0 / len(k)))


def tissue_labels(p: AnatomyParams, qx: np.ndarray, qy: np.ndarray, qz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hard tissue codes (CSF/GM/WM/deep GM, 0 outside) and the brain signed distance at the given points."""
    phi = brain_phi(p, qx, qy, qz).astype(np.float32)
    depth = -phi
    fold = _waves(p.wave_k, p.wave_phase, qx, qy, qz)
    k_mean = float(np.mean(np.linalg.norm(p.wave_k, axis=1)))
    afold = np.abs(fold)
    # sulcal depth varies along the surface so sulci are not all equally deep
    sdepth = p.sulcus_depth_mm * (0.6 + 0.4 * np.cos(fold * 1.7 + 0.5))
    labels = np.full(phi.shape, WM, dtype=np.uint8)
    gm = (depth < p.cortex_mm) | ((afold < p.sulcus_csf_halfwidth + p.cortex_mm * k_mean) & (depth < sdepth + p.cortex_mm))
    labels[gm] = GM
    for _, centre, semi in p.nuclei:
        labels[_ellipsoid_level(qx, qy, qz, centre, semi) < 0] = DEEP_GM
    csf = (depth < 0.6) | ((afold < p.sulcus_csf_halfwidth) & (depth < sdepth))
    a, _, c = p.semi_axes
    csf |= (np.abs(qx - p.fissure_shift_mm) < 0.9) & (qz > -0.15 * c) & (depth < 0.55 * c)
    for centre, semi, bend in p.ventricles:
        csf |= _ellipsoid_level(qx, qy, qz, centre, semi, bend) < 0
    labels[csf] = CSF
    labels[phi >= 0] = BACKGROUND
    return labels, phi


def white_matter_texture(p: AnatomyParams, qx, qy, qz) -> np.ndarray:
    """Small smooth intensity variations (about ±3%) so tissue is not piecewise constant."""
    return 1.0 + 0.03 * _waves(p.texture_k, p.texture_phase, qx, qy, qz)


def bias_field(p: AnatomyParams, qx, qy, qz) -> np.ndarray:
    """Smooth multiplicative coil-sensitivity field: exp of a low-order polynomial over the head."""
    a, b, c = p.semi_axes * 1.2
    terms = _monomials(qx / a, qy / b, qz / c)
    log_b = sum(coef * t for coef, t in zip(p.bias_coeffs, terms))
    return np.exp(log_b).astype(np.float32)
