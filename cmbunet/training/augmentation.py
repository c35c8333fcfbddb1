"""Cutting a batch of patches and augmenting it: translation, small rotations, lateral flips, then intensity and
resolution (:mod:`cmbunet.training.intensity_augmentation`).

Patches are cut in one vectorised step per case (:func:`extract_patches`), slightly larger than needed so that
a rotation never pulls in padding, then rotated and centre-cropped for the whole batch at once with
``torch.nn.functional.grid_sample`` (the approach of batchgenerators v2: trilinear for images, nearest for
labels). batchgenerators v1's ``augment_spatial`` does the same per patch with spline prefiltering, which
measured ~15 ms per patch here, slower than training on it. Labels are computed *after* augmentation.

Translation (< 4 voxels, as Chen & Dou) moves only positives, and a shift that would take the CMB out of the central
2x2x2 block is redrawn: otherwise most translated positives of small CMBs would silently become negatives and
the epoch's positive share would no longer be what the plans say. Rotation and flips are applied to every kind
with the same probability, so interpolation smoothness cannot tell a positive from a negative.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial.transform import Rotation

from cmbunet.plans.schema import Augmentation
from cmbunet.training.intensity_augmentation import augment_intensity
from cmbunet.training.samples import POSITIVE, SampleBank, touches_cmb
from cmbunet.utilities.patches import extract_patches


def rotation_margin(patch_size: Sequence[int], max_rotation_deg: float) -> np.ndarray:
    """Extra voxels per side so a patch rotated by up to ``max_rotation_deg`` stays inside the cut block."""
    if max_rotation_deg <= 0:
        return np.zeros(3, dtype=np.int64)
    half_diag = 0.5 * float(np.linalg.norm(patch_size))
    return np.full(3, int(np.ceil(half_diag * np.sin(np.deg2rad(max_rotation_deg)))) + 1, dtype=np.int64)


def central_hits(bank: SampleBank, rows: np.ndarray) -> np.ndarray:
    """Label rule on rows without cutting patches: a CMB voxel in the central 2x2x2 block (one call per case)."""
    hits = np.zeros(len(rows), dtype=bool)
    for ci in np.unique(rows[:, 0]):
        sel = np.flatnonzero(rows[:, 0] == ci)
        hits[sel] = touches_cmb(bank.cases[int(ci)].seg, rows[sel, 1:4])
    return hits


def translate_positives(bank: SampleBank, rows: np.ndarray, max_translation: int, rng: np.random.Generator,
                        rounds: int = 10) -> np.ndarray:
    """Shift positive centres by random integers in ``[-t, t]`` (< 4 voxels for t = 3) that keep the CMB central.

    Shifts that lose the CMB are redrawn (vectorised rounds); after ``rounds`` the centre stays unshifted.
    """
    out = rows.copy()
    todo = np.flatnonzero(out[:, 4] == POSITIVE)
    if max_translation <= 0:
        return out
    for _ in range(rounds):
        if len(todo) == 0:
            break
        trial = out[todo].copy()
        trial[:, 1:4] += rng.integers(-max_translation, max_translation + 1, size=(len(todo), 3))
        ok = central_hits(bank, trial)
        out[todo[ok]] = trial[ok]
        todo = todo[~ok]
    return out


def cut_patches(bank: SampleBank, rows: np.ndarray, size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Image ``(N, C, *size)`` and label ``(N, *size)`` patches at ``rows[:, 1:4]``; one cut per case, not per row."""
    size = tuple(int(s) for s in size)
    channels = bank.cases[0].data.shape[0]
    data = np.zeros((len(rows), channels, *size), dtype=np.float32)
    seg = np.zeros((len(rows), *size), dtype=np.uint8)
    for ci in np.unique(rows[:, 0]):
        sel = np.flatnonzero(rows[:, 0] == ci)
        case = bank.cases[int(ci)]
        data[sel] = extract_patches(case.data, rows[sel, 1:4], size)
        seg[sel] = extract_patches(case.seg, rows[sel, 1:4], size)
    return data, seg


def centre_crop(patches: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Central ``size`` of ``(N, ..., *S)`` patches (``S - size`` even, as cut by :func:`make_patches`)."""
    lo = [(b - s) // 2 for b, s in zip(patches.shape[-3:], size)]
    return patches[..., lo[0]:lo[0] + size[0], lo[1]:lo[1] + size[1], lo[2]:lo[2] + size[2]]


def rotate_and_crop(data: np.ndarray, seg: np.ndarray, size: Sequence[int], params: Augmentation,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Rotate a random subset of ``(C, *S)`` patches about their centre (voxel space) and crop their central ``size``.

    Unrotated patches are plain crops; the rotated ones are resampled in one batched ``grid_sample`` call.
    """
    size = [int(s) for s in size]
    out_d = np.ascontiguousarray(centre_crop(data, size))
    out_s = np.ascontiguousarray(centre_crop(seg, size))
    rotate = np.flatnonzero(rng.random(len(data)) < params.rotation_probability)
    if len(rotate) == 0 or params.max_rotation_deg <= 0:
        return out_d, out_s
    big, out = np.asarray(data.shape[2:], float), np.asarray(size, float)
    rot = Rotation.from_euler("xyz", rng.uniform(-1, 1, (len(rotate), 3)) * params.max_rotation_deg,
                              degrees=True).as_matrix()
    theta = np.einsum("i,nij,j->nij", 1.0 / big, rot, out)[:, ::-1, ::-1]  # grid order is (z, y, x)
    affine = torch.from_numpy(np.concatenate([theta, np.zeros((len(rotate), 3, 1))], axis=2).astype(np.float32))
    grid = F.affine_grid(affine, [len(rotate), 1, *size], align_corners=False)
    d = F.grid_sample(torch.from_numpy(np.ascontiguousarray(data[rotate])), grid, mode="bilinear",
                      padding_mode="border", align_corners=False)
    s = F.grid_sample(torch.from_numpy(seg[rotate][:, None].astype(np.float32)), grid, mode="nearest",
                      padding_mode="zeros", align_corners=False)
    out_d[rotate] = d.numpy()
    out_s[rotate] = s[:, 0].numpy().round().astype(np.uint8)
    return out_d, out_s


def random_flips(data: np.ndarray, seg: np.ndarray, axes: Sequence[int], probability: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flip each patch along each of ``axes`` (0 = x = left-right) with ``probability``; vectorised over the batch."""
    for axis in axes:
        flip = rng.random(len(data)) < probability
        if flip.any():
            data[flip] = np.flip(data[flip], axis=2 + axis)
            seg[flip] = np.flip(seg[flip], axis=1 + axis)
    return data, seg


def make_patches(bank: SampleBank, rows: np.ndarray, size: Sequence[int], params: Augmentation | None,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Cut (and, with ``params``, the plans' augmentation section, augment) the patches of
    ``rows [case, x, y, z, kind]``: ``(N,C,*size)``, ``(N,*size)``."""
    if params is None:
        return cut_patches(bank, rows, size)
    rows = translate_positives(bank, rows, params.max_translation_vox, rng)
    big = np.asarray(size) + 2 * rotation_margin(size, params.max_rotation_deg)
    data, seg = cut_patches(bank, rows, big)
    if (big != np.asarray(size)).any():
        data, seg = rotate_and_crop(data, seg, size, params, rng)
    data, seg = random_flips(np.ascontiguousarray(data), np.ascontiguousarray(seg), params.flip_axes,
                             params.flip_probability, rng)
    if params.intensity is not None:
        data = augment_intensity(data, params.intensity, rng)
    return data, seg
