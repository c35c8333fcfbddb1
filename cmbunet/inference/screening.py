"""The screening score map: one CMB probability per block position with the FCN's stride.

The volume is zero-padded by ``fcn_offset`` (= block // 2) at the low end and ``block - fcn_offset`` at the
high end before the pass, so that **score voxel j is the block centred at input voxel ``fcn_stride * j``**:
every input voxel, including those at the border of the cropped brain, is the centre of some block.

``mode="fcn"`` runs the network fully convolutionally (one pass, or tiles); ``mode="sliding"`` classifies every
block explicitly (batched), which gives the same map and exists for comparison and benchmarks.

**Empty space.** Preprocessing sets every voxel outside the brain to exactly 0, and the volume is cropped to the
brain's bounding box, which a brain fills only in part. All layers of the FCN are valid convolutions (and one
max pooling), so every block that holds only zeros gets the same score: the network's output on an all-zero
block. The FCN pass therefore runs, per tile, only over the box of block positions whose blocks touch a non-zero
voxel, and fills the rest with that one score, computed once with one block-sized forward pass. The map is the
same as without skipping, everywhere (tested).
"""

from __future__ import annotations

import itertools
from typing import Iterator, Sequence

import numpy as np
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
from torch import nn

from cmbunet.errors import InvalidValueError
from cmbunet.plans.schema import Plans
from cmbunet.utilities.autocast import ForwardOptions, batch_probability
from cmbunet.utilities.patches import extract_patches


def fcn_geometry(plans: Plans) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Block size, FCN stride and offset of the screening network: where each score-map voxel looks."""
    scr = plans.screening
    block = np.asarray(scr.block_size, dtype=np.int64)
    stride = np.asarray(scr.fcn_stride, dtype=np.int64)
    offset = np.asarray(scr.fcn_offset, dtype=np.int64)
    return block, stride, offset


def score_map_shape(volume_shape: Sequence[int], plans: Plans) -> tuple[int, ...]:
    """Number of block positions per axis: one per ``stride`` input voxels (ceil)."""
    _, stride, _ = fcn_geometry(plans)
    return tuple(int(-(-n // s)) for n, s in zip(volume_shape, stride))


def score_voxels_to_input(indices: np.ndarray, plans: Plans) -> np.ndarray:
    """Map score-map indices ``(N, 3)`` to the input voxels their blocks are centred on (exact)."""
    _, stride, _ = fcn_geometry(plans)
    return np.asarray(indices, dtype=np.int64).reshape(-1, 3) * stride


def _pad_volume(volume: np.ndarray, plans: Plans, n_out: Sequence[int]) -> np.ndarray:
    """Pad so that output voxel j (j < n_out) covers padded ``[s*j, s*j + B)``."""
    block, stride, offset = fcn_geometry(plans)
    lo = offset
    hi = [int((n - 1) * s + b - lo_ - shape) for n, s, b, lo_, shape in zip(n_out, stride, block, lo, volume.shape[1:])]
    return np.pad(volume, [(0, 0)] + [(int(a), max(0, int(b))) for a, b in zip(lo, hi)])


def output_tiles(n_out: Sequence[int], tile_out: Sequence[int]) -> Iterator[tuple[slice, ...]]:
    """Score-map tiles of at most ``tile_out`` positions that together cover ``n_out``, in C order."""
    ranges = [range(0, n, t) for n, t in zip(n_out, tile_out)]
    for starts in itertools.product(*ranges):
        yield tuple(slice(s, min(s + t, n)) for s, t, n in zip(starts, tile_out, n_out))


def _live_range(occupied: np.ndarray, n_tile: int, stride: int, block: int) -> tuple[int, int]:
    """Output positions ``[j0, j1)`` of a tile whose blocks ``[s*j, s*j + B)`` touch an occupied input voxel
    along one axis (``occupied``: per input voxel of the tile, any non-zero across the other axes)."""
    hit = np.flatnonzero(occupied)
    if len(hit) == 0:
        return 0, 0
    a, b = int(hit[0]), int(hit[-1]) + 1  # occupied input voxels [a, b)
    j0 = max(0, (a - block) // stride + 1)  # first j with s*j + B > a
    j1 = min(n_tile, -(-b // stride))  # last j with s*j < b, plus one
    return j0, max(j0, j1)


def _live_box(occupied: np.ndarray, box: tuple[slice, ...], stride: np.ndarray,
              block: np.ndarray) -> tuple[slice, ...] | None:
    """The part of ``box`` (score voxels) whose blocks touch an occupied voxel of ``occupied`` (padded input
    coordinates, where score voxel ``j`` is the block ``[s*j, s*j + B)``); None where no block does."""
    lo = [s.start * st for s, st in zip(box, stride)]
    hi = [(s.stop - 1) * st + b for s, st, b in zip(box, stride, block)]
    occ = occupied[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    live = [_live_range(occ.any(axis=tuple(a for a in range(3) if a != ax)), s.stop - s.start, int(st), int(b))
            for ax, (s, st, b) in enumerate(zip(box, stride, block))]
    if any(j1 == j0 for j0, j1 in live):
        return None
    return tuple(slice(s.start + j0, s.start + j1) for s, (j0, j1) in zip(box, live))


@torch.inference_mode()
def empty_block_score(network: nn.Module, in_channels: int, block: Sequence[int],
                      forward: ForwardOptions = ForwardOptions()) -> float:
    """The score of a block of zeros: what the FCN gives at every position whose block lies outside the brain."""
    zeros = np.zeros((1, int(in_channels), *[int(b) for b in block]), dtype=np.float32)
    return float(batch_probability([network], zeros, forward).reshape(-1)[0])


@torch.inference_mode()
def screening_score_map(network: nn.Module, volume: np.ndarray, plans: Plans,
                        forward: ForwardOptions = ForwardOptions(), tile_size: Sequence[int] | None = None,
                        mode: str = "fcn", skip_empty: bool = True, stats: dict | None = None) -> np.ndarray:
    """CMB probability for the block centred at every ``fcn_stride``-th voxel of ``volume`` ``(C, X, Y, Z)``.

    ``forward``: device, precision and layout of the pass, and blocks per batch in ``sliding`` mode.
    ``tile_size`` (input voxels; default ``plans.inference.tile_size``) bounds the memory of the FCN pass:
    the volume is processed in tiles of at most that size, each tile covering whole blocks, and the tiled map
    equals the untiled one. Pass ``tile_size=volume.shape[1:]`` (or larger) to force a single pass.
    ``skip_empty`` runs the FCN only where blocks touch non-zero voxels (same map; see the module docstring).
    ``stats``, when given, receives the number of tiles, tiles skipped and score positions computed.
    """
    network = network.to(forward.device).eval()
    block, stride, _ = fcn_geometry(plans)
    n_out = score_map_shape(volume.shape[1:], plans)
    padded = _pad_volume(np.asarray(volume, dtype=np.float32), plans, n_out)
    scores = np.zeros(n_out, dtype=np.float32)

    if mode == "sliding":
        grid = np.stack(np.meshgrid(*[np.arange(n) for n in n_out], indexing="ij"), -1).reshape(-1, 3)
        centres = grid * stride + block // 2  # centres in padded coordinates
        flat = scores.reshape(-1)
        step = forward.batch_size
        for i in range(0, len(centres), step):
            blocks = extract_patches(padded, centres[i : i + step], block)
            flat[i : i + step] = batch_probability([network], blocks, forward).reshape(-1)
        return scores
    if mode != "fcn":
        raise InvalidValueError(f"unknown screening mode '{mode}'; expected 'fcn' or 'sliding'")

    counts = _fcn_pass(network, padded, scores, plans, forward, tile_size, skip_empty)
    if stats is not None:
        stats.update(counts)
    return scores


def _fcn_pass(network: nn.Module, padded: np.ndarray, scores: np.ndarray, plans: Plans, forward: ForwardOptions,
              tile_size: Sequence[int] | None, skip_empty: bool) -> dict:
    """Fill ``scores`` (its shape is the number of block positions) from ``padded``, in which score voxel ``j``
    is the block ``[s*j, s*j + B)``; tiles, and with ``skip_empty`` only the boxes of blocks touching non-zeros."""
    block, stride, _ = fcn_geometry(plans)
    n_out = scores.shape
    if tile_size is None:
        tile_size = plans.inference.tile_size
    tile_out = _tile_out(tile_size, plans)
    occupied = np.any(padded != 0, axis=0) if skip_empty else None
    if skip_empty and not occupied.all():
        scores.fill(empty_block_score(network, padded.shape[0], block, forward))
    counts = {"tiles": 0, "tiles_skipped": 0, "positions": int(np.prod(n_out)), "positions_computed": 0}
    for sl in output_tiles(n_out, tile_out):
        counts["tiles"] += 1
        if skip_empty:
            sl = _live_box(occupied, sl, stride, block)
            if sl is None:
                counts["tiles_skipped"] += 1
                continue
        lo = [s.start * st for s, st in zip(sl, stride)]
        hi = [(s.stop - 1) * st + b for s, st, b in zip(sl, stride, block)]
        tile = padded[None, :, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        scores[sl] = batch_probability([network], tile, forward)[0]
        counts["positions_computed"] += int(np.prod([s.stop - s.start for s in sl]))
    return counts


def _tile_out(tile_size: Sequence[int], plans: Plans) -> list[int]:
    """Score voxels per tile: the input of ``[j0, j1)``, ``[s*j0, s*(j1-1) + B)``, must fit in ``tile_size``."""
    block, stride, _ = fcn_geometry(plans)
    return [max(1, (int(t) - int(b)) // int(s) + 1) for t, b, s in zip(tile_size, block, stride)]


def _clip_box(box: Sequence[slice], n_out: Sequence[int]) -> tuple[slice, ...]:
    """``box`` with open or negative ends resolved against the score map's shape ``n_out``."""
    return tuple(slice(*s.indices(n)[:2]) for s, n in zip(box, n_out))


def _box_window(box: Sequence[slice], plans: Plans) -> tuple[np.ndarray, np.ndarray]:
    """Input voxels ``[lo, hi)`` of the volume under the blocks of ``box`` (score voxels); they may reach past the
    volume, where the padded volume holds zeros."""
    block, stride, offset = fcn_geometry(plans)
    lo = np.array([s.start * st for s, st in zip(box, stride)]) - offset
    hi = np.array([(s.stop - 1) * st + b for s, st, b in zip(box, stride, block)]) - offset
    return lo, hi


def _window(volume: np.ndarray, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
    """``volume[:, lo:hi]`` as float32, with zeros where the window reaches past the volume."""
    return crop_and_pad_nd(np.asarray(volume, dtype=np.float32), [[int(a), int(b)] for a, b in zip(lo, hi)],
                           pad_value=0)


@torch.inference_mode()
def score_box(network: nn.Module, volume: np.ndarray, plans: Plans, box: Sequence[slice],
              forward: ForwardOptions = ForwardOptions(), tile_size: Sequence[int] | None = None) -> np.ndarray:
    """The score map of ``volume`` inside ``box`` (slices of score voxels) alone: the FCN on the input under it,
    equal to ``screening_score_map(...)[box]``."""
    network = network.to(forward.device).eval()
    box = _clip_box(box, score_map_shape(volume.shape[1:], plans))
    # padded coordinates [s*j0, s*(j1-1) + B) are voxels [.. - offset) of the volume, zeros outside it
    sub = _window(volume, *_box_window(box, plans))
    scores = np.zeros(tuple(s.stop - s.start for s in box), dtype=np.float32)
    _fcn_pass(network, sub, scores, plans, forward, tile_size, skip_empty=True)
    return scores


@torch.inference_mode()
def score_boxes(network: nn.Module, volume: np.ndarray, plans: Plans, boxes: Sequence[Sequence[slice]],
                forward: ForwardOptions = ForwardOptions(), tile_size: Sequence[int] | None = None) -> list[np.ndarray]:
    """``[score_box(network, volume, plans, box, ...) for box in boxes]`` in few forward passes.

    The float32 recomputation of a bf16 map scores many small boxes; one pass per box would pay the network's
    per-call cost once per candidate. Each box is first shrunk, as :func:`score_box` does, to the positions whose
    blocks touch a non-zero voxel (the rest take the score of a block of zeros); boxes of one shape then run as one
    batch, of at most a tile's worth of input voxels (the memory bound ``tile_size`` sets). A box larger than a
    tile runs alone, tiled, through :func:`score_box`. Every box thus runs exactly the computation of
    :func:`score_box`, only batched.
    """
    network = network.to(forward.device).eval()
    block, stride, _ = fcn_geometry(plans)
    tile_size = plans.inference.tile_size if tile_size is None else tile_size
    tile_out = _tile_out(tile_size, plans)
    boxes = [_clip_box(b, score_map_shape(volume.shape[1:], plans)) for b in boxes]
    scores = [np.zeros(tuple(s.stop - s.start for s in box), dtype=np.float32) for box in boxes]
    empty: list[float] = []  # the score of a block of zeros, computed once when first needed
    groups: dict[tuple[int, ...], list[tuple[int, tuple[slice, ...], np.ndarray]]] = {}
    for i, box in enumerate(boxes):
        if any(s.stop - s.start > t for s, t in zip(box, tile_out)):
            scores[i] = score_box(network, volume, plans, box, forward, tile_size)
            continue
        lo, hi = _box_window(box, plans)
        occupied = np.any(_window(volume, lo, hi) != 0, axis=0)
        live = _live_box(occupied, tuple(slice(0, n) for n in scores[i].shape), stride, block)
        if not occupied.all():
            if not empty:
                empty.append(empty_block_score(network, volume.shape[0], block, forward))
            scores[i].fill(empty[0])
        if live is not None:
            start = lo + np.array([s.start for s in live]) * stride
            shape = tuple(int((s.stop - s.start - 1) * st + b) for s, st, b in zip(live, stride, block))
            groups.setdefault(shape, []).append((i, live, start))
    budget = int(np.prod([int(t) for t in tile_size]))
    for shape, members in groups.items():
        per_pass = max(1, budget // int(np.prod(shape)))
        for k in range(0, len(members), per_pass):
            chunk = members[k : k + per_pass]
            batch = np.stack([_window(volume, start, start + np.array(shape)) for _, _, start in chunk])
            probs = batch_probability([network], batch, forward)
            for (i, live, _), p in zip(chunk, probs):
                scores[i][live] = p
    return scores
