"""What a stage's training reports as it goes: ``training_log.txt``, the epoch history, ``progress.png``, times.

The history is a dict of per-epoch lists (epoch, learning rate, losses, validation metrics, seconds, false
positives in use) kept in every checkpoint, so a resumed run continues its curves.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from cmbunet.utilities.file_io import atomic_path


class TrainingLog:
    """Appends timestamped lines to ``training_log.txt`` and echoes them (rank 0 only)."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        tqdm.write(line)
        with open(self.path, "a") as f:
            f.write(line + "\n")


def empty_history() -> dict[str, list]:
    """The per-epoch lists every checkpoint carries (metric lists are added as they are first recorded)."""
    return {"epoch": [], "lr": [], "train_loss": [], "val_loss": [], "epoch_seconds": [], "false_positives": []}


def record_epoch(history: dict[str, list], values: dict[str, Any]) -> None:
    """Append one epoch's values. A key first seen now is back-filled with None for the earlier epochs, so all
    lists stay aligned; a non-finite float is stored as None (a gap in the plot)."""
    for k, v in values.items():
        history.setdefault(k, [None] * (len(history["epoch"]) - (0 if k == "epoch" else 1)))
        history[k].append(None if isinstance(v, float) and not np.isfinite(v) else v)


#: Patch metrics plotted when recorded (the monitored one is added, once, when not among them).
PROGRESS_METRICS = ("sensitivity", "precision", "auc", "dice")


def progress_figure(history: dict[str, list], monitor: str, stage: str, fold: int | str, held_out: bool) -> Any:
    """The figure of ``progress.png``: losses, patch metrics and learning rate per epoch, titled with the
    stage and fold. ``held_out`` says whether the fixed patches come from validation cases; for fold ``all``
    they are training patches, and the labels say so instead of calling them validation."""
    from matplotlib.figure import Figure  # plotting only: training's other imports go without matplotlib
    from matplotlib.ticker import MaxNLocator

    def curve(name: str) -> str:  # what the fixed, unaugmented patches are
        return f"validation {name}" if held_out else f"{name} on fixed training patches"

    epochs = np.asarray(history["epoch"]) + 1
    fig = Figure(figsize=(8, 9.4))
    axes = fig.subplots(3, 1, sharex=True)
    axes[0].plot(epochs, history["train_loss"], label="training loss (augmented epoch batches)")
    axes[0].plot(epochs, [np.nan if v is None else v for v in history["val_loss"]], label=curve("loss"))
    for name in dict.fromkeys((*PROGRESS_METRICS, monitor)):
        values = history.get(f"val_{name}")
        if values is not None and not all(v is None for v in values):
            label = curve(name) + (" (selects checkpoint_best)" if name == monitor else "")
            axes[1].plot(epochs, [np.nan if v is None else v for v in values], label=label)
    axes[2].plot(epochs, history["lr"], label="learning rate")
    for ax in axes:
        ax.legend(loc="best", fontsize=8)
        ax.grid(alpha=0.3)
    axes[2].set_xlabel("epoch")
    axes[2].xaxis.set_major_locator(MaxNLocator(integer=True))
    subtitle = ("metrics on fixed, unaugmented patches of the validation cases" if held_out else
                "no validation cases (fold all): metrics on fixed, unaugmented patches of the TRAINING cases")
    fig.suptitle(f"{stage} stage, fold {fold}\n{subtitle}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_progress(history: dict[str, list], path: Path, monitor: str, stage: str, fold: int | str,
                  held_out: bool) -> None:
    """Write ``progress.png`` (see :func:`progress_figure`) atomically."""
    fig = progress_figure(history, monitor, stage, fold, held_out)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80)


def stage_eta(epoch_seconds: Sequence[float], remaining_epochs: int, cases_to_screen: int = 0,
              seconds_per_screened_case: float | None = None) -> float:
    """Seconds left in a stage: the median epoch so far (robust to the epochs that also mine) times the epochs
    left, plus the whole-volume screening passes still to come (mining and validation: ``cases_to_screen``
    volumes at the last measured ``seconds_per_screened_case``; nothing is added before a pass has been timed)."""
    left = float(np.median(epoch_seconds)) * remaining_epochs if len(epoch_seconds) and remaining_epochs > 0 else 0.0
    return left + (cases_to_screen * seconds_per_screened_case if seconds_per_screened_case else 0.0)


def format_duration(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``42s``."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def epoch_summary(epoch: int, epochs: int, lr: float, train_loss: float, val: dict, monitor: str, improved: bool,
                  mined: int, num_fp: int, seconds: float) -> str:
    """The log line of one epoch."""
    metrics = " ".join(f"{k}={v:.4f}" for k, v in val.items() if isinstance(v, float) and np.isfinite(v))
    extra = f" mined={mined} (total FPs {num_fp})" if mined else ""
    return (f"epoch {epoch + 1}/{epochs} lr={lr:.2e} train_loss={train_loss:.4f} val: {metrics}"
            f"{' *best ' + monitor if improved else ''}{extra} [{seconds:.1f}s]")
