"""The files of mined false positives in a stage folder: ``false_positives.json`` (the training cases') and
``validation_false_positives.json`` (the validation cases'), each FP with its case, centre, score, the epochs
completed when it was mined, its score under the final screening model once that is known, and, once retired,
the epoch it was retired at."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cmbunet.errors import InputError
from cmbunet.training.samples import SampleBank
from cmbunet.utilities.file_io import load_json, save_json

FALSE_POSITIVES_FILE = "false_positives.json"
VALIDATION_FP_FILE = "validation_false_positives.json"


def save_false_positives(path: str | Path, bank: SampleBank, threshold: float) -> None:
    """``false_positives.json``: each mined FP with its case, centre, score and the epochs completed when mined;
    ``final_score`` where the final screening model's score is known; retired FPs (``mining_keep="hard"``) with
    the epoch they were retired at."""
    names = bank.names
    n = len(bank.false_positives)
    dropped = bank.fp_dropped if len(bank.fp_dropped) == n else np.full(n, -1, np.int64)
    final = bank.fp_final_scores if len(bank.fp_final_scores) == n else np.full(n, np.nan, np.float32)
    fps = [{"case": names[r[0]], "center": r[1:].tolist(), "score": float(s), "epoch": int(e)}
           | ({"final_score": float(f)} if np.isfinite(f) else {}) | ({"retired": int(d)} if d >= 0 else {})
           for r, s, e, f, d in zip(bank.false_positives, bank.fp_scores, bank.fp_epochs, final, dropped)]
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
    bank.fp_final_scores = np.array([f.get("final_score", np.nan) for f in keep], dtype=np.float32)
    # an FP retired after max_epoch was still in use then (exact resume)
    bank.fp_dropped = np.array([int(f.get("retired", -1)) if max_epoch is None or int(f.get("retired", -1)) <= max_epoch
                                else -1 for f in keep], dtype=np.int64)
    return int((bank.fp_dropped < 0).sum())
