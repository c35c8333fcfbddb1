"""Discrimination of screening candidates: every candidate at every shifted centre, in batched forward passes.

The screening centre of a small CMB can be a voxel or two off, and the discrimination CNN was trained on blocks
centred on the lesion (patches whose centre misses it are hard negatives). Each candidate is therefore scored
at ``(2s+1)^3`` centres (``s = plans.inference.discrimination_shift_vox``, 27 for s = 1), the scores are
aggregated per candidate (max by default) and the candidate moves to its best centre. The reference code
re-padded the whole volume for every border shift and ran one forward pass per candidate; here the volume is
padded once and all (candidate, shift) blocks go through the network in batches.

The first two layers of the discrimination CNN are stride-1 valid convolutions, so they commute with shifting
the block: they run once on a block grown by ``2s`` per axis. The rest of the network then runs fully
convolutionally over their output, once per phase of its max-pooling, and each shift reads its logits at its
own position (``DiscriminationCNN.shifted_logits``). The same probabilities as 27 full passes up to float
rounding, for a fraction of their operations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from cmbunet.errors import InvalidValueError
from cmbunet.plans.schema import Plans
from cmbunet.utilities.autocast import ForwardOptions, batch_probability, cmb_probability
from cmbunet.utilities.patches import extract_patches


@dataclass(frozen=True)
class PaddedVolume:
    """A ``(C, X, Y, Z)`` volume padded once by ``margin`` voxels per side, so any block whose centre is within
    ``margin - B//2`` of the volume can be cut without further padding."""

    array: np.ndarray
    margin: np.ndarray  # (3,) int
    shape: tuple[int, int, int]  # unpadded spatial shape

    @classmethod
    def create(cls, volume: np.ndarray, margin: Sequence[int], pad_value: float = 0.0) -> "PaddedVolume":
        m = np.asarray(margin, dtype=np.int64).reshape(3)
        arr = np.pad(np.asarray(volume, dtype=np.float32), [(0, 0)] + [(int(a), int(a)) for a in m], constant_values=pad_value)
        return cls(arr, m, tuple(int(s) for s in volume.shape[1:]))

    @classmethod
    def for_blocks(cls, volume: np.ndarray, size: Sequence[int], pad_value: float, reach: int = 0) -> "PaddedVolume":
        """Padded by half a block (rounded up) plus ``reach`` per side: a block of ``size`` centred anywhere in the
        volume and moved by up to ``reach`` voxels is cut without further padding."""
        return cls.create(volume, [int(s) // 2 + int(s) % 2 + reach for s in size], pad_value)

    def patches(self, centres: np.ndarray, size: Sequence[int]) -> np.ndarray:
        """Blocks ``(N, C, *size)`` centred at ``centres`` (unpadded voxel coordinates)."""
        return extract_patches(self.array, np.asarray(centres, dtype=np.int64).reshape(-1, 3) + self.margin, size)


def shift_offsets(shift_vox: int) -> np.ndarray:
    """All integer offsets in ``[-s, s]^3`` as ``(S, 3)``, the zero offset first so ties keep the centre."""
    r = np.arange(-int(shift_vox), int(shift_vox) + 1)
    grid = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    zero_first = np.argsort(np.abs(grid).sum(axis=1), kind="stable")
    return grid[zero_first]


@torch.inference_mode()
def block_probabilities(networks: Sequence[nn.Module], padded: PaddedVolume, centres: np.ndarray, size: Sequence[int],
                        forward: ForwardOptions, item_shape: Sequence[int] = ()) -> np.ndarray:
    """``(N, *item_shape)`` fold-averaged CMB probabilities of the blocks of ``size`` centred at ``centres``, cut and
    run ``forward.batch_size`` at a time so memory stays bounded: one probability per block (the discrimination
    CNN, ``item_shape`` empty) or per voxel (the U-Net, ``item_shape`` its patch size)."""
    out = np.empty((len(centres), *item_shape), dtype=np.float32)
    for start in range(0, len(centres), forward.batch_size):
        blocks = padded.patches(centres[start : start + forward.batch_size], size)
        out[start : start + len(blocks)] = batch_probability(networks, blocks, forward)
    return out


def _shares_trunk(networks: Sequence[nn.Module]) -> bool:
    return all(hasattr(net, "shift_invariant_features") and hasattr(net, "shifted_logits") for net in networks)


def _shared_trunk_probability(net: nn.Module, grown: torch.Tensor, shifts: np.ndarray, reach: int) -> torch.Tensor:
    """``(n, S)`` CMB probability of ``n`` candidates at every shift, from blocks grown by ``reach`` per side."""
    logits = net.shifted_logits(net.shift_invariant_features(grown), shifts.tolist(), reach)
    return cmb_probability(logits, dim=2)


@torch.inference_mode()
def shifted_probabilities(networks: Sequence[nn.Module], padded: PaddedVolume, centres: np.ndarray, shifts: np.ndarray,
                          block_size: Sequence[int], forward: ForwardOptions = ForwardOptions(),
                          share_trunk: bool = True, mirror_axes: Sequence[int] = ()) -> np.ndarray:
    """``(N, S)`` fold-averaged CMB probability of every candidate at every shifted centre.

    ``forward.batch_size`` counts (candidate, shift) blocks. Networks that expose a shift-invariant trunk (the
    discrimination CNN) compute it once per candidate unless ``share_trunk`` is False; any other network sees
    every shifted block. ``mirror_axes`` (spatial axes 0-2) adds test-time mirroring: every combination of flips
    along them is scored too and averaged (2^k passes), as the blocks were flipped in training.
    """
    if mirror_axes:
        return _mirrored(networks, padded, centres, shifts, block_size, forward, share_trunk, mirror_axes)
    n, s = len(centres), len(shifts)
    if share_trunk and _shares_trunk(networks) and n:
        reach = int(np.abs(shifts).max())
        grown_size = [int(b) + 2 * reach for b in block_size]
        out = np.empty((n, s), dtype=np.float32)
        per_batch = max(1, forward.batch_size // s)
        def probability(net: nn.Module, grown: torch.Tensor) -> torch.Tensor:
            return _shared_trunk_probability(net, grown, shifts, reach)

        for start in range(0, n, per_batch):
            grown = padded.patches(centres[start : start + per_batch], grown_size)
            out[start : start + len(grown)] = batch_probability(networks, grown, forward, probability)
        return out
    all_centres = (np.asarray(centres, dtype=np.int64)[:, None, :] + shifts[None]).reshape(-1, 3)
    return block_probabilities(networks, padded, all_centres, block_size, forward).reshape(n, s)


def _mirrored(networks: Sequence[nn.Module], padded: PaddedVolume, centres: np.ndarray, shifts: np.ndarray,
              block_size: Sequence[int], forward: ForwardOptions, share_trunk: bool,
              mirror_axes: Sequence[int]) -> np.ndarray:
    """Mean over every flip combination of ``mirror_axes``: the networks see each block mirrored. With a shared
    trunk the grown block is flipped once, and its window at a shift holds the flipped block of the opposite
    shift (the block is grown symmetrically), so those columns are mapped back."""
    axes = sorted({int(a) for a in mirror_axes})
    index = {tuple(v): i for i, v in enumerate(shifts.tolist())}
    share_trunk = share_trunk and _shares_trunk(networks)  # the wrappers below always offer the trunk interface
    total = np.zeros((len(centres), len(shifts)), dtype=np.float64)
    combos = [[a for k, a in enumerate(axes) if mask >> k & 1] for mask in range(2 ** len(axes))]
    for flip in combos:
        flipped = [_Flipped(net, [2 + a for a in flip]) for net in networks] if flip else list(networks)
        probs = shifted_probabilities(flipped, padded, centres, shifts, block_size, forward, share_trunk)
        sign = np.ones(3, dtype=np.int64)
        if share_trunk:  # column j of the flipped trunk pass saw the original block at shift sign * shifts[j]
            sign[flip] = -1
        order = np.array([index[tuple((sign * v).tolist())] for v in shifts])
        total[:, order] += probs
    return (total / len(combos)).astype(np.float32)


class _Flipped(nn.Module):
    """A network that sees its input flipped along ``dims``; keeps the shift-invariant trunk interface, flipping
    the grown block once before the trunk."""

    def __init__(self, net: nn.Module, dims: Sequence[int]):
        super().__init__()
        self.net, self.dims = net, list(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.flip(x, self.dims))

    def shift_invariant_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.shift_invariant_features(torch.flip(x, self.dims))

    def shifted_logits(self, y: torch.Tensor, shifts: Sequence[Sequence[int]], reach: int) -> torch.Tensor:
        return self.net.shifted_logits(y, shifts, reach)


def aggregate_shifts(probs: np.ndarray, centres: np.ndarray, shifts: np.ndarray, how: str = "max",
                     shape: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One probability per candidate and its new centre.

    ``max`` (the reference code of Chen & Dou) keeps the best shift and moves the candidate there; ``mean`` averages the
    shifts and leaves the candidate where screening put it. Moved centres are clipped into ``shape``.
    """
    centres = np.asarray(centres, dtype=np.int64).reshape(-1, 3)
    if len(centres) == 0:
        return np.zeros(0, dtype=np.float32), centres
    if how == "max":
        best = np.argmax(probs, axis=1)  # first maximum: the zero shift wins ties
        prob = probs[np.arange(len(probs)), best]
        moved = centres + shifts[best]
    elif how == "mean":
        prob, moved = probs.mean(axis=1), centres.copy()
    else:
        raise InvalidValueError(f"unknown discrimination_aggregate '{how}'; expected 'max' or 'mean'")
    if shape is not None:
        moved = np.clip(moved, 0, np.asarray(shape, dtype=np.int64) - 1)
    return prob.astype(np.float32), moved


def discriminate_candidates(networks: Sequence[nn.Module], volume: np.ndarray, centres: np.ndarray, plans: Plans,
                            forward: ForwardOptions = ForwardOptions(), shift_vox: int | None = None,
                            aggregate: str | None = None, mirror: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Discrimination probability ``(N,)`` and refined centres ``(N, 3)`` of candidates in ``volume`` ``(C, X, Y, Z)``.

    ``forward``: how the networks run (``batch_size`` counts (candidate, shift) blocks). With several networks
    (folds) the per-shift probabilities are averaged over folds before aggregation, so all folds agree on one
    refined centre. ``mirror`` (default: the plans' ``discrimination_mirror``) also scores every block mirrored
    along the training flip axes (``augmentation.flip_axes``) and averages.
    """
    centres = np.asarray(centres, dtype=np.int64).reshape(-1, 3)
    inf = plans.inference
    shift_vox = int(inf.discrimination_shift_vox if shift_vox is None else shift_vox)
    aggregate = str(inf.discrimination_aggregate if aggregate is None else aggregate)
    if len(centres) == 0:
        return np.zeros(0, dtype=np.float32), centres
    block = [int(b) for b in plans.discrimination.block_size]
    shifts = shift_offsets(shift_vox)
    pad_value = float(plans.normalization.background_value)
    padded = PaddedVolume.for_blocks(volume, block, pad_value, reach=shift_vox)
    mirror = bool(inf.discrimination_mirror if mirror is None else mirror)
    axes = [int(a) for a in plans.augmentation.flip_axes] if mirror else []
    probs = shifted_probabilities(networks, padded, centres, shifts, block, forward, mirror_axes=axes)
    return aggregate_shifts(probs, centres, shifts, aggregate, volume.shape[1:])
