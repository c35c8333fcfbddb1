"""The sample bank of one fold: preprocessed volumes in memory and the three kinds of training samples.

A sample is one row ``[case_index, x, y, z]`` (a block centre in preprocessed voxels); an epoch's draw adds a
fifth column, the kind (positive, random negative, mined false positive). Patches are cut from the volumes
only when a batch is made, so samples can be redrawn every epoch at no I/O cost.

- **Positives** are the CMB components listed in each case's properties (``properties["cmbs"]``).
- **Random negatives** are brain voxels whose neighbourhood holds no CMB voxel (rejection sampling, vectorised).
- **False positives** are screening candidates without a CMB voxel in their central 2x2x2 block; the bank
  holds them, ``mining.py`` finds, keeps and retires them.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from cmbunet.errors import CMBUNetError, InputError
from cmbunet.plans.validation import SAMPLE_KINDS
from cmbunet.preprocessing.preprocessor import load_preprocessed_case
from cmbunet.utilities.file_io import atomic_path, load_json
from cmbunet.utilities.geometry import mask_bbox
from cmbunet.utilities.patches import extract_patches

#: The code of each kind of sample (the rows' fifth column) by its name in the plans.
KIND_NAMES = {kind: code for code, kind in enumerate(SAMPLE_KINDS)}
POSITIVE, NEGATIVE, FALSE_POSITIVE = (KIND_NAMES[k] for k in ("positive", "negative", "false_positive"))

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
    #: score of each FP under the final screening model (the screening stage's last mining pass); NaN where not
    #: known. ``fp_sampling="candidates"`` draws most FPs among those at or above the inference threshold.
    fp_final_scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    #: sampling weight of each active FP (``fp_sampling`` "hard" or "candidates"); None: drawn uniformly
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
