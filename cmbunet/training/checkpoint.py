"""Checkpoints as plain dicts of tensors and numbers, so ``torch.load(weights_only=True)`` can read them.

A checkpoint holds everything needed to continue a stage exactly where it stopped: weights, optimiser state
(momentum is not lost on resume), the learning-rate schedule, the RNG states, the training history and the
hash of the plans it was trained with (a model trained with other plans is refused instead of silently used).

Layout: ``<model folder>/fold_F/<stage>/checkpoint_{latest,best,final}.pth``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cmbunet.errors import InputError, MissingStageError, PlansMismatchError
from cmbunet.utilities.file_io import atomic_path

CHECKPOINT_KEYS = ("stage", "epoch", "weights", "optimizer", "scheduler", "plans_hash", "best_metric", "history", "rng")
CHECKPOINT_KINDS = ("latest", "best", "final")


def checkpoint_path(stage_dir: str | Path, which: str) -> Path:
    """``stage_dir/checkpoint_<which>.pth``; ``which`` is latest, best or final."""
    if which not in CHECKPOINT_KINDS:
        raise ValueError(f"unknown checkpoint '{which}'; expected one of {CHECKPOINT_KINDS}")
    return Path(stage_dir) / f"checkpoint_{which}.pth"


def stage_dir(model_dir: str | Path, fold: int | str, stage: str) -> Path:
    """``model_dir/fold_F/<stage>``."""
    return Path(model_dir) / f"fold_{fold}" / stage


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> None:
    """Write atomically, so an interrupted save never replaces a good checkpoint with a broken one."""
    missing = [k for k in CHECKPOINT_KEYS if k not in checkpoint]
    if missing:
        raise ValueError(f"checkpoint lacks keys {missing}")
    with atomic_path(path, suffix=".pth") as tmp:
        torch.save(checkpoint, tmp)


def load_checkpoint(path: str | Path, expected_plans_hash: str | None = None) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no code runs on load) and check which plans made it."""
    path = Path(path)
    if not path.is_file():
        raise MissingStageError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a user-facing input problem
        raise InputError(path, f"cannot be read as a cmbunet checkpoint ({e})") from None
    if not isinstance(ckpt, dict) or "weights" not in ckpt:
        raise InputError(path, "not a cmbunet checkpoint (no 'weights' entry)")
    if expected_plans_hash is not None and ckpt.get("plans_hash") != expected_plans_hash:
        raise PlansMismatchError(
            f"{path} was trained with plans {ckpt.get('plans_hash')} but the plans in use hash to "
            f"{expected_plans_hash}; use the plans.json saved next to the model, or retrain after re-planning"
        )
    return ckpt


def load_stage_network(
    model_dir: str | Path,
    fold: int | str,
    stage: str,
    plans: dict,
    device: str | torch.device = "cpu",
    which: str = "final",
) -> nn.Module:
    """Build the ``stage`` network from ``plans``, load ``fold_F/<stage>/checkpoint_<which>.pth``, eval mode."""
    from cmbunet.networks import build_network
    from cmbunet.plans.plans_io import plans_hash

    path = checkpoint_path(stage_dir(model_dir, fold, stage), which)
    if not path.is_file():
        raise MissingStageError(
            f"the {stage} stage of fold {fold} is not trained: {path} is missing "
            f"(run cmbunet_train DATASET {fold} -s {stage})"
        )
    ckpt = load_checkpoint(path, expected_plans_hash=plans_hash(plans))
    network = build_network(stage, plans)
    network.load_state_dict(ckpt["weights"])
    return network.to(torch.device(device)).eval()


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
