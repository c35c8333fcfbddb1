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

import numpy as np
from batchgenerators.transforms.abstract_transforms import Compose
from batchgenerators.transforms.color_transforms import (BrightnessMultiplicativeTransform,
                                                         ContrastAugmentationTransform, GammaTransform)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform

from cmbunet.plans.schema import Intensity


def intensity_transforms(intensity: Intensity) -> Compose:
    """The batchgenerators pipeline of ``plans.augmentation.intensity``: resolution first (it is the acquisition),
    then blur, noise, intensity."""
    return Compose([
        SimulateLowResolutionTransform(zoom_range=intensity.low_resolution_zoom, per_channel=True, p_per_channel=0.5,
                                       order_downsample=0, order_upsample=3,
                                       p_per_sample=intensity.low_resolution_probability),
        GaussianBlurTransform(intensity.blur_sigma, different_sigma_per_channel=True, different_sigma_per_axis=True,
                              p_isotropic=0.5, p_per_channel=0.5, p_per_sample=intensity.blur_probability),
        GaussianNoiseTransform(intensity.noise_variance, p_per_sample=intensity.noise_probability),
        BrightnessMultiplicativeTransform(intensity.brightness, per_channel=True,
                                          p_per_sample=intensity.brightness_probability),
        ContrastAugmentationTransform(intensity.contrast, preserve_range=True, per_channel=True,
                                      p_per_sample=intensity.contrast_probability),
        GammaTransform(intensity.gamma, invert_image=False, per_channel=True, retain_stats=True,
                       p_per_sample=intensity.gamma_probability),
    ])


def augment_intensity(data: np.ndarray, intensity: Intensity, rng: np.random.Generator) -> np.ndarray:
    """Apply the intensity/resolution transforms to a batch ``(N, C, X, Y, Z)``; deterministic given ``rng``."""
    if len(data) == 0:
        return data
    saved_np, saved_py = np.random.get_state(), random.getstate()
    try:
        seed_np, seed_py = (int(v) for v in rng.integers(0, 2**31 - 1, size=2))
        np.random.seed(seed_np)
        random.seed(seed_py)
        out = intensity_transforms(intensity)(data=np.array(data, dtype=np.float32, copy=True))["data"]
    finally:
        np.random.set_state(saved_np)
        random.setstate(saved_py)
    return np.ascontiguousarray(out, dtype=np.float32)
