"""Intensity and resolution augmentation: make a patch look as if another scanner had acquired it.

Sites differ in what a patch looks like after z-scoring: slice thickness (a microbleed in a 3 mm slice is a
faint smear, in a 0.8 mm slice a crisp dot), blur, noise, grey/white contrast and gamma. A detector trained on
two sites and used on a third fails on exactly these, so training draws them at random, with batchgenerators'
transforms (the ones nnU-Net uses) and a low-resolution simulation strongest across slices (axis 2).

Each transform is applied to a patch with its own probability, independent of the patch's kind, so the
augmentation itself never tells a CMB from a negative. batchgenerators draws from NumPy's and Python's global
generators; :func:`augment_intensity` seeds both from the batch's own generator and restores them afterwards, so
batches stay reproducible (resume is bit-exact) and nothing else's random stream moves.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
from batchgenerators.transforms.abstract_transforms import Compose
from batchgenerators.transforms.color_transforms import (BrightnessMultiplicativeTransform,
                                                         ContrastAugmentationTransform, GammaTransform)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform

from cmbunet.errors import InvalidValueError

Range = tuple[float, float]


@dataclass(frozen=True)
class IntensityParams:
    """Ranges and per-patch probabilities of the intensity and resolution transforms."""

    low_resolution_zoom: tuple[Range, Range, Range]
    low_resolution_probability: float
    blur_sigma: Range
    blur_probability: float
    noise_variance: Range
    noise_probability: float
    brightness: Range
    brightness_probability: float
    contrast: Range
    contrast_probability: float
    gamma: Range
    gamma_probability: float

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "IntensityParams":
        """From the JSON of ``plans.augmentation.intensity``, which must name every field (the planner writes them)."""
        names = set(cls.__dataclass_fields__)
        if set(d) != names:
            raise InvalidValueError(f"augmentation.intensity must hold exactly {sorted(names)}; missing "
                                    f"{sorted(names - set(d))}, unknown {sorted(set(d) - names)}")
        full = dict(d)
        pair = lambda v: (float(v[0]), float(v[1]))  # noqa: E731
        kw: dict[str, Any] = {"low_resolution_zoom": tuple(pair(z) for z in full["low_resolution_zoom"])}
        for k, v in full.items():
            if k != "low_resolution_zoom":
                kw[k] = float(v) if k.endswith("probability") else pair(v)
        for k, v in kw.items():
            if k.endswith("probability") and not 0.0 <= v <= 1.0:
                raise InvalidValueError(f"augmentation.intensity.{k} must lie in [0, 1], got {v}")
        return cls(**kw)

    def transforms(self) -> Compose:
        """The batchgenerators pipeline: resolution first (it is the acquisition), then blur, noise, intensity."""
        return Compose([
            SimulateLowResolutionTransform(zoom_range=self.low_resolution_zoom, per_channel=True, p_per_channel=0.5,
                                           order_downsample=0, order_upsample=3,
                                           p_per_sample=self.low_resolution_probability),
            GaussianBlurTransform(self.blur_sigma, different_sigma_per_channel=True, different_sigma_per_axis=True,
                                  p_isotropic=0.5, p_per_channel=0.5, p_per_sample=self.blur_probability),
            GaussianNoiseTransform(self.noise_variance, p_per_sample=self.noise_probability),
            BrightnessMultiplicativeTransform(self.brightness, per_channel=True,
                                              p_per_sample=self.brightness_probability),
            ContrastAugmentationTransform(self.contrast, preserve_range=True, per_channel=True,
                                          p_per_sample=self.contrast_probability),
            GammaTransform(self.gamma, invert_image=False, per_channel=True, retain_stats=True,
                           p_per_sample=self.gamma_probability),
        ])


def augment_intensity(data: np.ndarray, params: IntensityParams, rng: np.random.Generator) -> np.ndarray:
    """Apply the intensity/resolution transforms to a batch ``(N, C, X, Y, Z)``; deterministic given ``rng``."""
    if len(data) == 0:
        return data
    saved_np, saved_py = np.random.get_state(), random.getstate()
    try:
        seed_np, seed_py = (int(v) for v in rng.integers(0, 2**31 - 1, size=2))
        np.random.seed(seed_np)
        random.seed(seed_py)
        out = params.transforms()(data=np.array(data, dtype=np.float32, copy=True))["data"]
    finally:
        np.random.set_state(saved_np)
        random.setstate(saved_py)
    return np.ascontiguousarray(out, dtype=np.float32)
