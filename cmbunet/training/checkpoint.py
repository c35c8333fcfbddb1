"""Checkpoints as plain dicts of tensors and numbers, so ``torch.load(weights_only=True)`` can read them.

A checkpoint holds everything needed to continue a stage exactly where it stopped: weights, optimiser state
(momentum is not lost on resume), the learning-rate schedule, the RNG states, the training history and the
hash of the plans it was trained with (a model trained with other plans is refused instead of silently used).

Where checkpoints lie and how they are read belongs to :mod:`cmbunet.model_folder` (inference reads them
too); this module writes them and keeps the RNG state they carry.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmbunet.errors import InvalidValueError
from cmbunet.model_folder import load_checkpoint, load_stage_network  # noqa: F401 - read here by training's callers
from cmbunet.utilities.file_io import checksummed_path

CHECKPOINT_KEYS = ("stage", "epoch", "weights", "optimizer", "scheduler", "plans_hash", "best_metric", "history", "rng")


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> None:
    """Write atomically, so an interrupted save never replaces a good checkpoint with a broken one, with its
    sha256 beside it (``checkpoint_*.pth.sha256``), checked by every load."""
    missing = [k for k in CHECKPOINT_KEYS if k not in checkpoint]
    if missing:
        raise InvalidValueError(f"checkpoint lacks keys {missing}")
    with checksummed_path(path, suffix=".pth") as tmp:
        torch.save(checkpoint, tmp)


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as tensors/lists (numpy arrays would need pickled globals)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": list(random.getstate()[1]) + [random.getstate()[0]],
        "python_gauss": random.getstate()[2],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`; dropout and any other draw continue as if never interrupted."""
    py = list(state["python"])
    random.setstate((int(py[-1]), tuple(int(v) for v in py[:-1]), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), int(state["numpy_pos"]), 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
