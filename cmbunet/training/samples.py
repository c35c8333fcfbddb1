"""The sample bank of one fold: preprocessed volumes in memory and the three kinds of training samples.

A sample is one row ``[case_index, x, y, z]`` (a block centre in preprocessed voxels); an epoch's draw adds a
fifth column, the kind (positive, random negative, mined false positive). Patches are cut from the volumes
only when a batch is made, so samples can be redrawn every epoch at no I/O cost.

- **Positives** are the CMB components listed in each case's properties (``properties["cmbs"]``).
- **Random negatives** are brain voxels whose neighbourhood holds no CMB voxel (rejection sampling, vectorised).
- **False positives** are screening candidates without a CMB voxel in their central 2x2x2 block, mined by
  running the screening FCN over the fold's training volumes. With ``mining_keep="all"`` they accumulate over
  the mining passes (002's code). With ``"hard"`` each pass also re-scores the pool on the volumes it screens
  and retires the FPs the current model no longer scores above the mining threshold: the early passes of a weak
  model find thousands of easy FPs per case, which would otherwise crowd out the mimics the final model still
  fires on, and those are what discrimination meets at inference.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from cmbunet.errors import CMBUNetError, InputError
from cmbunet.inference.candidates import find_candidates
from cmbunet.inference.screening import screening_score_map
from cmbunet.plans.schema import Plans
from cmbunet.utilities.file_io import atomic_path, load_json, save_json
from cmbunet.utilities.geometry import mask_bbox
from cmbunet.utilities.patches import extract_patches

POSITIVE, NEGATIVE, FALSE_POSITIVE = 0, 1, 2
KIND_NAMES = {"positive": POSITIVE, "negative": NEGATIVE, "false_positive": FALSE_POSITIVE}

#: Above this many bytes of uncompressed volumes, cases are unpacked to ``.npy`` once and memory-mapped
#: instead of being held in RAM (the page cache then shares them between data-loading workers and ranks).
MMAP_THRESHOLD_BYTES = 4 * 1024**3

#: Random negatives keep this many voxels between their central 2x2x2 block and any CMB voxel, so that a
#: "random" negative is never a slightly shifted positive (those come from translation and mining instead).
NEGATIVE_CLEARANCE_VOX = 2


@dataclass
class CaseArrays:
    """One preprocessed case: ``data (C,X,Y,Z)``, ``seg (X,Y,Z)``, ``brain (X,Y,Z)`` and its CMB centres."""

    name: str
    data: np.ndarray
    seg: np.ndarray
    brain: np.ndarray
    cmb_centres: np.ndarray  # (K, 3) int64, rounded centres of mass
    brain_box: np.ndarray  # (2, 3) int64, half-open bounding box of the brain mask


@dataclass
class SampleBank:
    """Volumes of a set of cases plus the positive and mined false-positive sample rows."""

    cases: list[CaseArrays]
    positives: np.ndarray  # (P, 4) [case, x, y, z]
    false_positives: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))
    fp_scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    fp_epochs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # epochs completed when mined
    #: epoch at which ``mining_keep="hard"`` retired each FP, -1 while it is in use. Retired rows stay in place, so
    #: the order of the pool, and with it a resumed run's draws, never changes.
    fp_dropped: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    #: sampling weight of each active FP (``fp_sampling="hard"``); None: drawn uniformly
    fp_weights: np.ndarray | None = None

    @property
    def active_false_positives(self) -> np.ndarray:
        """The FP rows training draws from (all of them unless some were retired)."""
        if len(self.fp_dropped) != len(self.false_positives):
            return self.false_positives
        return self.false_positives[self.fp_dropped < 0]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.cases]


# ----------------------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------------------
def _npz_uncompressed_bytes(npz: Path) -> int:
    try:
        with zipfile.ZipFile(npz) as z:
            return sum(i.file_size for i in z.infolist())
    except (zipfile.BadZipFile, OSError) as e:
        raise InputError(npz, f"cannot be read as a preprocessed case ({e}); re-run cmbunet_plan_and_preprocess "
                              "with --clean") from None


def unpack_case(preprocessed_dir: str | Path, case: str) -> dict[str, Path]:
    """Write ``unpacked/CASE_{data,seg,brain}.npy`` once (atomic), so later runs can memory-map them."""
    npz = Path(preprocessed_dir) / "data" / f"{case}.npz"
    out = {k: Path(preprocessed_dir) / "unpacked" / f"{case}_{k}.npy" for k in ("data", "seg", "brain")}
    if all(p.is_file() and p.stat().st_mtime >= npz.stat().st_mtime for p in out.values()):
        return out
    with np.load(npz) as z:
        for key, path in out.items():
            with atomic_path(path, suffix=".npy") as tmp:
                np.save(tmp, z[key])
    return out


def _brain_box(brain: np.ndarray) -> np.ndarray:
    """Half-open bounding box of the mask as ``(2, 3)`` rows ``[starts, stops]``; the whole volume when the mask
    is empty."""
    return np.array(mask_bbox(brain), dtype=np.int64).T.copy()


def cmb_centres_from_properties(properties: dict) -> np.ndarray:
    """Rounded CMB centres ``(K, 3)`` from ``properties["cmbs"]`` (centre of mass, preprocessed voxels)."""
    centres = [c["center"] for c in properties.get("cmbs", [])]
    return np.rint(np.asarray(centres, dtype=np.float64)).astype(np.int64).reshape(-1, 3)


def load_case_arrays(preprocessed_dir: str | Path, case: str, mmap: bool = False) -> CaseArrays:
    """Load one case, from the ``.npz`` (``mmap=False``) or memory-mapped from its unpacked ``.npy`` files."""
    from cmbunet.preprocessing.preprocessor import load_preprocessed_case

    if mmap:
        paths = unpack_case(preprocessed_dir, case)
        data, seg, brain = (np.load(paths[k], mmap_mode="r") for k in ("data", "seg", "brain"))
        properties = load_json(Path(preprocessed_dir) / "data" / f"{case}.json")
    else:
        data, seg, brain, properties = load_preprocessed_case(preprocessed_dir, case)
    return CaseArrays(case, data, seg, brain, cmb_centres_from_properties(properties), _brain_box(np.asarray(brain)))


def positive_rows(cases: Sequence[CaseArrays]) -> np.ndarray:
    """One row ``[case, x, y, z]`` per CMB component."""
    rows = [np.column_stack([np.full(len(c.cmb_centres), i), c.cmb_centres]) for i, c in enumerate(cases)]
    return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 4), np.int64)


def build_bank(preprocessed_dir: str | Path, cases: Sequence[str], mmap: bool | str = "auto") -> SampleBank:
    """Load ``cases`` into a bank; ``mmap="auto"`` memory-maps when the volumes would not comfortably fit in RAM."""
    if not cases:
        raise CMBUNetError("no cases to build training samples from")
    if mmap == "auto":
        total = sum(_npz_uncompressed_bytes(Path(preprocessed_dir) / "data" / f"{c}.npz")
                    for c in cases if (Path(preprocessed_dir) / "data" / f"{c}.npz").is_file())
        mmap = total > MMAP_THRESHOLD_BYTES
    loaded = [load_case_arrays(preprocessed_dir, c, mmap=bool(mmap)) for c in cases]
    return SampleBank(loaded, positive_rows(loaded))


# ----------------------------------------------------------------------------------------------------------
# random negatives
# ----------------------------------------------------------------------------------------------------------
def touches_cmb(seg: np.ndarray, centres: np.ndarray, clearance: int = 0) -> np.ndarray:
    """``True`` where the central 2x2x2 block ``[c-1, c+1)``, grown by ``clearance`` voxels, holds a CMB voxel.

    With ``clearance=0`` this is exactly the patch label rule (:func:`central_label`).
    """
    size = (2 + 2 * int(clearance),) * 3
    block = extract_patches(np.asarray(seg), np.asarray(centres).reshape(-1, 3), size)
    return block.reshape(len(block), -1).any(axis=1)


def sample_negative_centres(case: CaseArrays, n: int, rng: np.random.Generator,
                            clearance: int = NEGATIVE_CLEARANCE_VOX, max_rounds: int = 20) -> np.ndarray:
    """``n`` brain voxels away from CMBs, by rejection from the brain's bounding box (a few vectorised rounds)."""
    lo, hi = case.brain_box
    found: list[np.ndarray] = []
    have = 0
    for _ in range(max_rounds):
        if have >= n:
            break
        m = max(16, 2 * (n - have))
        cand = lo + (rng.random((m, 3)) * np.maximum(hi - lo, 1)).astype(np.int64)
        cand = np.minimum(cand, np.asarray(case.brain.shape) - 1)
        keep = np.asarray(case.brain)[tuple(cand.T)].astype(bool)
        cand = cand[keep]
        if len(cand):
            cand = cand[~touches_cmb(case.seg, cand, clearance)]
        found.append(cand)
        have += len(cand)
    out = np.concatenate(found) if found else np.zeros((0, 3), np.int64)
    if len(out) < n:
        raise CMBUNetError(f"case {case.name}: could not find {n} negative samples inside the brain mask away "
                           "from CMBs; is the brain mask empty?")
    return out[:n]


def draw_random_negatives(bank: SampleBank, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` rows ``[case, x, y, z]``; cases are chosen uniformly, so small brains are not under-represented."""
    if n <= 0:
        return np.zeros((0, 4), np.int64)
    per_case = np.bincount(rng.integers(0, len(bank.cases), n), minlength=len(bank.cases))
    rows = [np.column_stack([np.full(k, i), sample_negative_centres(bank.cases[i], int(k), rng)])
            for i, k in enumerate(per_case) if k > 0]
    out = np.concatenate(rows).astype(np.int64)
    return out[rng.permutation(len(out))]


# ----------------------------------------------------------------------------------------------------------
# an epoch's draw
# ----------------------------------------------------------------------------------------------------------
def split_counts(n: int, proportions: dict[str, float]) -> dict[str, int]:
    """Integer counts summing to ``n`` in the given proportions (largest remainder, ties in key order)."""
    keys = list(proportions)
    w = np.asarray([float(proportions[k]) for k in keys])
    if (w < 0).any() or w.sum() <= 0:
        raise CMBUNetError(f"sample proportions {proportions} must be non-negative and not all zero")
    exact = n * w / w.sum()
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return dict(zip(keys, counts.tolist()))


def epoch_counts(n: int, proportions: dict[str, float], num_false_positives: int) -> dict[str, int]:
    """Counts per kind for one epoch; without mined false positives yet, their share goes to random negatives.

    Disc/segmentation proportions have no ``negative`` entry; they fall back to random negatives only when
    screening found no false positive at all (nothing else to contrast CMBs with).
    """
    counts = split_counts(n, {k: v for k, v in proportions.items() if k in KIND_NAMES})
    if num_false_positives == 0 and counts.get("false_positive", 0):
        counts["negative"] = counts.get("negative", 0) + counts.pop("false_positive")
    return counts


def draw_epoch_samples(bank: SampleBank, n: int, proportions: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    """``n`` shuffled rows ``[case, x, y, z, kind]``: positives and false positives drawn with replacement."""
    counts = epoch_counts(n, proportions, len(bank.active_false_positives))
    parts = []
    for kind, k in counts.items():
        if k == 0:
            continue
        if kind == "negative":
            rows = draw_random_negatives(bank, k, rng)
        else:
            pool = bank.positives if kind == "positive" else bank.active_false_positives
            if len(pool) == 0:
                raise CMBUNetError(f"no {kind.replace('_', ' ')} samples in cases {bank.names[:5]}...; "
                                   "training needs at least one CMB in the training cases")
            weights = bank.fp_weights if kind == "false_positive" else None
            if weights is not None and len(weights) == len(pool):
                rows = pool[rng.choice(len(pool), size=k, p=weights)]
            else:
                rows = pool[rng.integers(0, len(pool), k)]
        parts.append(np.column_stack([rows, np.full(k, KIND_NAMES[kind])]))
    out = np.concatenate(parts).astype(np.int64)
    return out[rng.permutation(len(out))]


def draw_fixed_samples(bank: SampleBank, n: int, proportions: dict[str, float], seed: int) -> np.ndarray:
    """A fixed validation set: one draw from a seed of its own, duplicates removed (rows sorted)."""
    rows = draw_epoch_samples(bank, n, proportions, np.random.default_rng([int(seed), 7919]))
    return np.unique(rows, axis=0)


#: Share of the draws spread evenly over all false positives under ``fp_sampling="hard"``, so that an FP the
#: network rejects today is still seen and not forgotten.
HARD_SAMPLING_FLOOR = 0.25


def hardness_weights(cmb_probability: np.ndarray, floor: float = HARD_SAMPLING_FLOOR) -> np.ndarray:
    """Sampling weights of false positives from the network's current CMB probability of each: a quarter of the
    draws uniform, the rest in proportion to the probability, so the mimics the network still takes for CMBs
    (the ones that cost precision on new sites) come up most often. Sums to 1."""
    p = np.clip(np.asarray(cmb_probability, dtype=np.float64), 0.0, 1.0)
    if p.size == 0:
        return p
    hard = p / p.sum() if p.sum() > 0 else np.full(p.size, 1.0 / p.size)
    w = floor / p.size + (1.0 - floor) * hard
    return w / w.sum()


# ----------------------------------------------------------------------------------------------------------
# hard negative mining
# ----------------------------------------------------------------------------------------------------------
def screening_candidates(network: nn.Module, case: CaseArrays, plans: Plans, threshold: float,
                         device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Candidate centres and scores of the screening FCN on one whole volume."""
    scores = screening_score_map(network, np.asarray(case.data, dtype=np.float32), plans, device=device)
    return find_candidates(scores, plans, threshold=threshold)


def mine_false_positives(network: nn.Module, bank: SampleBank, plans: Plans, threshold: float,
                         device: str | torch.device = "cpu", case_indices: Sequence[int] | None = None
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Screening candidates with no CMB voxel in their central 2x2x2 block: rows ``(F, 4)`` and scores, plus the
    current score of every FP already in the bank (NaN for FPs of cases not screened now)."""
    rows, scores = [], []
    current = np.full(len(bank.false_positives), np.nan, dtype=np.float32)
    stride = np.asarray(plans.screening.fcn_stride, dtype=np.int64)
    indices = range(len(bank.cases)) if case_indices is None else case_indices
    for i in indices:
        case = bank.cases[i]
        score_map = screening_score_map(network, np.asarray(case.data, dtype=np.float32), plans, device=device)
        centres, s = find_candidates(score_map, plans, threshold=threshold)
        fp = ~touches_cmb(case.seg, centres) if len(centres) else np.zeros(0, bool)
        rows.append(np.column_stack([np.full(int(fp.sum()), i), centres[fp]]))
        scores.append(s[fp])
        mine = np.flatnonzero(bank.false_positives[:, 0] == i)
        if len(mine):  # score voxel j is the block centred at input voxel stride * j
            j = np.clip(np.rint(bank.false_positives[mine, 1:] / stride).astype(np.int64), 0,
                        np.asarray(score_map.shape) - 1)
            current[mine] = score_map[tuple(j.T)]
    if not rows:
        return np.zeros((0, 4), np.int64), np.zeros(0, np.float32), current
    return (np.concatenate(rows).astype(np.int64).reshape(-1, 4), np.concatenate(scores).astype(np.float32),
            current)


def retire_easy_false_positives(bank: SampleBank, current: np.ndarray, threshold: float, epoch: int) -> int:
    """Retire the bank's FPs in use whose current score is below ``threshold`` (NaN: not re-scored, kept);
    returns how many."""
    if len(bank.fp_dropped) != len(bank.false_positives):
        bank.fp_dropped = np.full(len(bank.false_positives), -1, np.int64)
    easy = (np.nan_to_num(np.asarray(current, dtype=np.float32), nan=np.inf) < threshold) & (bank.fp_dropped < 0)
    bank.fp_dropped[easy] = int(epoch)
    return int(easy.sum())


def merge_false_positives(bank: SampleBank, rows: np.ndarray, scores: np.ndarray, epoch: int) -> int:
    """Add newly mined rows to the bank, dropping exact duplicates (sort-based, O(N log N)); returns how many were new.

    A duplicate keeps its first mining epoch and score, so the list only ever grows; a retired FP found again is
    back in use.
    """
    before = len(bank.false_positives)
    rows = rows.astype(np.int64).reshape(-1, 4)
    dropped = bank.fp_dropped if len(bank.fp_dropped) == before else np.full(before, -1, np.int64)
    all_rows = np.concatenate([bank.false_positives, rows])
    all_scores = np.concatenate([bank.fp_scores, scores.astype(np.float32)])
    all_epochs = np.concatenate([bank.fp_epochs, np.full(len(rows), int(epoch), np.int64)])
    all_dropped = np.concatenate([dropped, np.full(len(rows), -1, np.int64)])
    _, first, inverse = np.unique(all_rows, axis=0, return_index=True, return_inverse=True)
    found_again = np.zeros(len(first), bool)
    found_again[inverse.reshape(-1)[before:]] = True
    all_dropped[first[found_again]] = -1
    first = np.sort(first)  # keep the order of discovery
    bank.false_positives, bank.fp_scores, bank.fp_epochs = all_rows[first], all_scores[first], all_epochs[first]
    bank.fp_dropped = all_dropped[first]
    return len(first) - before


def save_false_positives(path: str | Path, bank: SampleBank, threshold: float) -> None:
    """``false_positives.json``: each mined FP with its case, centre, score and the epochs completed when mined;
    retired FPs (``mining_keep="hard"``) follow with the epoch they were retired at."""
    names = bank.names
    dropped = bank.fp_dropped if len(bank.fp_dropped) == len(bank.false_positives) else \
        np.full(len(bank.false_positives), -1, np.int64)
    fps = [{"case": names[r[0]], "center": r[1:].tolist(), "score": float(s), "epoch": int(e)}
           | ({"retired": int(d)} if d >= 0 else {})
           for r, s, e, d in zip(bank.false_positives, bank.fp_scores, bank.fp_epochs, dropped)]
    per_case = {n: 0 for n in names}
    for f in fps:
        per_case[f["case"]] += "retired" not in f
    save_json({"mining_threshold": float(threshold), "num_false_positives": len(fps) - int((dropped >= 0).sum()),
               "num_retired": int((dropped >= 0).sum()), "per_case": per_case, "false_positives": fps}, path)


def load_false_positives(path: str | Path, bank: SampleBank, max_epoch: int | None = None) -> int:
    """Put the FPs of ``path`` that belong to the bank's cases (and were mined by ``max_epoch``) into the bank."""
    path = Path(path)
    try:
        content = load_json(path)
        entries = content["false_positives"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(path, f"cannot be read as a false-positive list ({e})") from None
    index = {n: i for i, n in enumerate(bank.names)}
    keep = [f for f in entries if f["case"] in index and (max_epoch is None or int(f["epoch"]) <= max_epoch)]
    rows = np.array([[index[f["case"]], *f["center"]] for f in keep], dtype=np.int64).reshape(-1, 4)
    bank.false_positives = rows
    bank.fp_scores = np.array([f["score"] for f in keep], dtype=np.float32)
    bank.fp_epochs = np.array([f["epoch"] for f in keep], dtype=np.int64)
    # an FP retired after max_epoch was still in use then (exact resume)
    bank.fp_dropped = np.array([int(f.get("retired", -1)) if max_epoch is None or int(f.get("retired", -1)) <= max_epoch
                                else -1 for f in keep], dtype=np.int64)
    return int((bank.fp_dropped < 0).sum())
