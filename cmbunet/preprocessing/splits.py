"""Cross-validation splits (``splits_final.json``): deterministic, and stratified by whether a case has CMBs.

About a third of VALDO scans have no CMB. A plain KFold can put most of them into one fold, whose validation
F1 is then undefined; dealing each stratum round-robin over the folds keeps every fold's mix close to the
dataset's.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from cmbunet.errors import CMBUNetError, InputError
from cmbunet.utilities.file_io import load_json, save_json

DEFAULT_FOLDS = 5
DEFAULT_SEED = 12345
SPLITS_FILE = "splits_final.json"


def generate_splits(
    cases: Sequence[str], case_has_cmb: dict[str, bool], n_folds: int = DEFAULT_FOLDS, seed: int = DEFAULT_SEED
) -> list[dict[str, list[str]]]:
    """``n_folds`` folds of ``{"train": [...], "val": [...]}`` over sorted case ids.

    Each stratum (with / without CMBs) is shuffled with a seeded generator and dealt round-robin; the dealing
    of the second stratum continues where the first stopped, so fold sizes differ by at most one. With fewer
    cases than folds, one fold per case is used (with a warning); at least 2 cases are needed.
    """
    ordered = sorted(set(cases))
    if len(ordered) < 2:
        raise CMBUNetError(f"cross-validation needs at least 2 cases, got {len(ordered)}; train with fold 'all'")
    if len(ordered) < n_folds:
        warnings.warn(f"only {len(ordered)} cases: using {len(ordered)} folds instead of {n_folds}", stacklevel=2)
        n_folds = len(ordered)
    rng = np.random.default_rng(seed)
    val: list[list[str]] = [[] for _ in range(n_folds)]
    position = 0
    for stratum in (True, False):
        members = [c for c in ordered if bool(case_has_cmb.get(c, False)) is stratum]
        for c in rng.permutation(np.asarray(members, dtype=object)) if members else []:
            val[position % n_folds].append(str(c))
            position += 1
    return [{"train": [c for c in ordered if c not in set_v], "val": sorted(set_v)} for set_v in map(set, val)]


def load_or_create_splits(
    preprocessed_dir: str | Path,
    cases: Sequence[str],
    case_has_cmb: dict[str, bool],
    n_folds: int = DEFAULT_FOLDS,
    seed: int = DEFAULT_SEED,
) -> list[dict[str, list[str]]]:
    """Reuse ``splits_final.json`` when it covers exactly ``cases`` (so folds never change under a trained
    model); otherwise create it."""
    path = Path(preprocessed_dir) / SPLITS_FILE
    if path.is_file():
        splits = load_splits(path)
        covered = {c for f in splits for c in f["val"]}
        if covered == set(cases):
            return splits
        warnings.warn(f"{path} does not cover the current cases; writing new splits", stacklevel=2)
    splits = generate_splits(cases, case_has_cmb, n_folds, seed)
    save_json(splits, path)
    return splits


def load_splits(path: str | Path) -> list[dict[str, list[str]]]:
    """Read and check a splits file (a list of ``{"train", "val"}`` dicts)."""
    try:
        splits = load_json(path)
    except (OSError, ValueError) as e:
        raise InputError(path, f"cannot be read as JSON: {e}") from None
    if not isinstance(splits, list) or not all(isinstance(f, dict) and {"train", "val"} <= f.keys() for f in splits):
        raise InputError(path, 'expected a list of {"train": [...], "val": [...]} folds')
    return splits


def get_fold_cases(splits: list[dict[str, list[str]]], fold: int | str) -> tuple[list[str], list[str]]:
    """``(train, val)`` of a fold; fold ``"all"`` trains on every case and validates on none."""
    if str(fold) == "all":
        every = {c for f in splits for key in ("train", "val") for c in f[key]}
        return sorted(every), []
    try:
        index = int(fold)
    except ValueError:
        raise CMBUNetError(f"fold must be an integer or 'all', got '{fold}'") from None
    if not 0 <= index < len(splits):
        raise CMBUNetError(f"fold {index} does not exist; the splits have folds 0..{len(splits) - 1} and 'all'")
    return list(splits[index]["train"]), list(splits[index]["val"])
