"""Acquisition sites: what differs between scanners, field strengths and protocols in a multi-site cohort.

A detector meets new sites in practice: other voxel sizes (thin 3D scans and thick 2D slices), other
tissue contrasts (field strength, echo time), other noise, bias and blur, and microbleeds that bloom more
or less. Each :class:`Site` draws one acquisition from its ranges; datasets can mix sites or hold one out
(``benchmarks/leave_one_site_out.py``).

The catalogue spans in-plane spacings of 0.45-1.1 mm, slices of 0.7-3.5 mm, 1.5 T and 3 T contrasts and SNRs
of 10-45, loosely after VALDO's cohorts (RSS 1.5 T at 0.8 mm; SABRE and ALFA 3 T with 3 mm slices) and other
published SWI/T2* protocols.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cmbunet.errors import InvalidValueError

Range = tuple[float, float]


@dataclass(frozen=True)
class Site:
    """Ranges of one site's acquisition; every case draws its own values from them."""

    name: str
    inplane_mm: Range
    slice_mm: Range
    snr: Range  # white-matter signal over noise sigma
    field_t: float  # 1.5 or 3: sets contrast and blooming
    psf_sigma_vox: Range = (0.3, 0.6)  # in-plane blur of the reconstruction, voxels
    bias_scale: Range = (0.5, 1.5)  # multiplies the subject's log bias field
    oblique_deg: Range = (3.0, 20.0)
    description: str = ""

    def draw(self, rng: np.random.Generator) -> dict:
        """One acquisition: spacing, SNR, blur, bias strength, contrast jitter and CMB appearance."""
        inplane = rng.uniform(*self.inplane_mm)
        y = inplane * (rng.uniform(0.95, 1.05) if rng.random() < 0.2 else 1.0)  # rare non-square pixels
        strong = self.field_t >= 2.9
        return {
            "spacing": np.array([inplane, y, rng.uniform(*self.slice_mm)]),
            "snr": float(rng.uniform(*self.snr)),
            "psf_sigma_vox": float(rng.uniform(*self.psf_sigma_vox)),
            "bias_scale": float(rng.uniform(*self.bias_scale)),
            "oblique_deg": self.oblique_deg,
            # grey/white contrast is lower at 1.5 T; deep nuclei darken with iron more at 3 T
            "gm_wm_gain": float(rng.uniform(0.85, 1.25) if strong else rng.uniform(0.6, 1.0)),
            # susceptibility blooming grows with field strength and echo time
            "bloom_gain": float(rng.uniform(1.0, 1.35) if strong else rng.uniform(0.85, 1.1)),
            "cmb_depth": (0.55, 0.95) if strong else (0.4, 0.85),
        }


SITES: dict[str, Site] = {s.name: s for s in (
    Site("thick3T", (0.45, 0.55), (2.5, 3.0), (14.0, 35.0), 3.0, description="3 T 2D T2*, thin pixels, 3 mm slices (SABRE-like)"),
    Site("thin15T", (0.45, 0.55), (0.7, 0.9), (12.0, 30.0), 1.5, description="1.5 T 3D T2*, 0.8 mm slices (RSS-like)"),
    Site("coarse3T", (0.8, 1.0), (2.5, 3.0), (15.0, 40.0), 3.0, description="3 T, 1 mm pixels, 3 mm slices (ALFA-like)"),
    Site("swi3T", (0.55, 0.75), (1.0, 1.6), (18.0, 45.0), 3.0, (0.3, 0.5), description="3 T 3D SWI-like, 1-1.6 mm slices"),
    Site("mid15T", (0.85, 1.1), (1.8, 2.6), (10.0, 25.0), 1.5, (0.4, 0.8), description="1.5 T, 1 mm pixels, 2-2.5 mm slices, noisy"),
    Site("iso3T", (0.75, 0.95), (0.9, 1.3), (15.0, 35.0), 3.0, description="3 T near-isotropic 3D GRE"),
    Site("thick15T", (0.7, 0.95), (3.0, 3.5), (12.0, 30.0), 1.5, (0.4, 0.7), (0.8, 2.0), description="1.5 T 2D GRE, 3-3.5 mm slices, strong bias"),
)}

#: Sites drawn for "realistic" cases when none are named (each case picks one uniformly).
DEFAULT_SITES = tuple(SITES)


def parse_sites(names: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Site names from a list or a comma-separated string; ``None``/``"all"`` means the whole catalogue."""
    if names is None or names == "all" or names == ["all"]:
        return DEFAULT_SITES
    if isinstance(names, str):
        names = [n for n in names.split(",") if n]
    bad = [n for n in names if n not in SITES]
    if bad or not names:
        raise InvalidValueError(f"unknown site(s) {bad or '(none)'}; choose among {', '.join(SITES)} or 'all'")
    return tuple(names)
