"""The screening score map: one CMB probability per block position with the FCN's stride.

The volume is zero-padded by ``fcn_offset`` (= block // 2) at the low end and ``block - fcn_offset`` at the
high end before the pass, so that **score voxel j is the block centred at input voxel ``fcn_stride * j``**:
every input voxel, including those at the border of the cropped brain, is the centre of some block.

``mode="fcn"`` runs the network fully convolutionally (one pass, or tiles); ``mode="sliding"`` classifies every
block explicitly (batched), which gives the same map and exists for comparison and benchmarks.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from cmbunet.utilities.patches import extract_patches


def _geometry(plans: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scr = plans["screening"]
    block = np.asarray(scr["block_size"], dtype=np.int64)
    stride = np.asarray(scr.get("fcn_stride", [2, 2, 2]), dtype=np.int64)
    offset = np.asarray(scr.get("fcn_offset", block // 2), dtype=np.int64)
    return block, stride, offset


def score_map_shape(volume_shape: Sequence[int], plans: dict) -> tuple[int, ...]:
    """Number of block positions per axis: one per ``stride`` input voxels (ceil)."""
    _, stride, _ = _geometry(plans)
    return tuple(int(-(-n // s)) for n, s in zip(volume_shape, stride))


def score_voxels_to_input(indices: np.ndarray, plans: dict) -> np.ndarray:
    """Map score-map indices ``(N, 3)`` to the input voxels their blocks are centred on (exact)."""
    _, stride, _ = _geometry(plans)
    return np.asarray(indices, dtype=np.int64).reshape(-1, 3) * stride


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def _probabilities(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.float(), dim=1)[:, 1]


def _pad_volume(volume: np.ndarray, plans: dict, n_out: Sequence[int]) -> np.ndarray:
    """Pad so that output voxel j (j < n_out) covers padded ``[s*j, s*j + B)``."""
    block, stride, offset = _geometry(plans)
    lo = offset
    hi = [int((n - 1) * s + b - lo_ - shape) for n, s, b, lo_, shape in zip(n_out, stride, block, lo, volume.shape[1:])]
    return np.pad(volume, [(0, 0)] + [(int(a), max(0, int(b))) for a, b in zip(lo, hi)])


def _tiles(n_out: Sequence[int], tile_out: Sequence[int]) -> Iterator[tuple[slice, ...]]:
    ranges = [range(0, n, t) for n, t in zip(n_out, tile_out)]
    for starts in itertools.product(*ranges):
        yield tuple(slice(s, min(s + t, n)) for s, t, n in zip(starts, tile_out, n_out))


@torch.inference_mode()
def screening_score_map(
    network: nn.Module,
    volume: np.ndarray,
    plans: dict,
    device: str | torch.device = "cpu",
    tile_size: Sequence[int] | None = None,
    mode: str = "fcn",
    batch_size: int = 256,
) -> np.ndarray:
    """CMB probability for the block centred at every ``fcn_stride``-th voxel of ``volume`` ``(C, X, Y, Z)``.

    ``tile_size`` (input voxels; default ``plans["inference"]["tile_size"]``) bounds the memory of the FCN pass:
    the volume is processed in tiles of at most that size, each tile covering whole blocks, and the tiled map
    equals the untiled one. Pass ``tile_size=volume.shape[1:]`` (or larger) to force a single pass.
    """
    device = torch.device(device)
    network = network.to(device).eval()
    block, stride, _ = _geometry(plans)
    n_out = score_map_shape(volume.shape[1:], plans)
    padded = _pad_volume(np.asarray(volume, dtype=np.float32), plans, n_out)
    scores = np.zeros(n_out, dtype=np.float32)

    if mode == "sliding":
        grid = np.stack(np.meshgrid(*[np.arange(n) for n in n_out], indexing="ij"), -1).reshape(-1, 3)
        centres = grid * stride + block // 2  # centres in padded coordinates
        flat = scores.reshape(-1)
        for i in range(0, len(centres), batch_size):
            patches = torch.from_numpy(extract_patches(padded, centres[i : i + batch_size], block)).to(device)
            with _autocast(device):
                flat[i : i + batch_size] = _probabilities(network(patches)).reshape(-1).cpu().numpy()
        return scores
    if mode != "fcn":
        raise ValueError(f"unknown screening mode '{mode}'; expected 'fcn' or 'sliding'")

    if tile_size is None:
        tile_size = plans.get("inference", {}).get("tile_size") or list(padded.shape[1:])
    # output voxels per tile: input tile [s*j0, s*(j1-1) + B) must fit in tile_size
    tile_out = [max(1, (int(t) - int(b)) // int(s) + 1) for t, b, s in zip(tile_size, block, stride)]
    for sl in _tiles(n_out, tile_out):
        lo = [s.start * st for s, st in zip(sl, stride)]
        hi = [(s.stop - 1) * st + b for s, st, b in zip(sl, stride, block)]
        tile = padded[:, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        x = torch.from_numpy(np.ascontiguousarray(tile))[None].to(device)
        with _autocast(device):
            prob = _probabilities(network(x))[0]
        scores[sl] = prob.cpu().numpy()
    return scores
