"""The training schedules the planner writes: Chen & Dou's (VALDO 2021) on the GPU, a measured budget on the CPU,
and the presets'.

One schedule per stage and device kind (``plans["training"][gpu|cpu][stage]``, typed as
:class:`cmbunet.plans.schema.Schedule`).
"""

from __future__ import annotations

from typing import Sequence

#: Cases screened by each intermediate mining pass of the CPU schedule (the final pass screens all): whole-volume
#: screening of every training case dominates CPU training on VALDO-sized scans.
CPU_MINING_CASES = 16


def _schedule(
    epochs: int,
    samples: int,
    batch: int,
    stage: str,
    val_samples: int,
    mining_epochs: Sequence[int] = (),
    segmentation_loss: str = "dice_ce",
    mining_cases: int | None = None,
    mining_keep: str = "all",
) -> dict:
    """One stage's schedule; optimiser, loss and proportions follow Chen & Dou for the stage.

    Segmentation uses soft Dice plus cross-entropy by default: Dice alone (Chen & Dou) learns slowly from scratch on
    lesions that fill ~1% of a patch; the ``paper`` preset keeps Chen & Dou's plain Dice.
    """
    if stage == "segmentation":
        sched = {"epochs": epochs, "samples_per_epoch": samples, "batch_size": batch,
                 "optimizer": "adam", "lr": 1e-3, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0,
                 "loss": segmentation_loss, "class_weights": None}
    else:
        sched = {"epochs": epochs, "samples_per_epoch": samples, "batch_size": batch,
                 "optimizer": "sgd", "lr": 1e-2, "momentum": 0.99, "nesterov": True, "weight_decay": 0.0,
                 "loss": "weighted_ce", "class_weights": [0.25, 0.75]}
    sched["lr_schedule"] = "poly"
    sched["poly_exponent"] = 0.9
    if stage == "screening":
        sched["proportions"] = {"positive": 1, "negative": 2, "false_positive": 1}
    else:
        sched["proportions"] = {"positive": 1, "false_positive": 1}
    sched["val_samples"] = val_samples
    if stage == "screening":
        sched["mining_epochs"] = [int(e) for e in mining_epochs]
        sched["mining_threshold"] = 0.1
        sched["mining_cases"] = mining_cases
        sched["mining_keep"] = mining_keep
    if stage == "discrimination":
        sched["fp_sampling"] = "uniform"  # "hard": in proportion to the network's current CMB probability
    return sched


def gpu_schedules(segmentation_loss: str = "dice_ce") -> dict:
    """Chen & Dou's published schedule (150 x 0.2M, 80 x 0.1M, 100 x 8k samples)."""
    return {
        "screening": _schedule(150, 200_000, 128, "screening", 2000, (50, 80, 120)),
        "discrimination": _schedule(80, 100_000, 128, "discrimination", 2000),
        "segmentation": _schedule(100, 8000, 64, "segmentation", 800, segmentation_loss=segmentation_loss),
    }


def cpu_schedules() -> dict:
    """A budget schedule for the auto preset's networks on a 2-core CPU: 23-40 minutes for 24 realistic subjects.

    Measured on 2 cores (AVX-512 BF16) for 24 realistic subjects (documentation/experiments.md, section 6e): per
    training sample screening 12 ms, discrimination 37 ms, segmentation 0.24 s; a mining pass 19 s per volume.
    Screening 30k samples 6 min + 56 volumes mined 18 min, discrimination 12k 7.5 min, segmentation 2k 8 min.
    """
    return {
        "screening": _schedule(20, 1500, 32, "screening", 200, (7, 14), mining_cases=CPU_MINING_CASES),
        "discrimination": _schedule(15, 800, 32, "discrimination", 200),
        "segmentation": _schedule(10, 200, 16, "segmentation", 64),
    }


def fast_schedules() -> dict:
    """The quick-trial budget for quarter-width networks on a 2-core CPU (preset ``fast``; timings and F1 in
    ``documentation/training.md``): discrimination gets most of the samples, because after screening has found
    the CMBs it is what decides the false positives."""
    seg = _schedule(36, 256, 16, "segmentation", 64)
    seg["lr"] = 1e-2
    return {
        "screening": _schedule(10, 1024, 32, "screening", 200, (3, 6), mining_cases=CPU_MINING_CASES),
        "discrimination": _schedule(30, 1024, 32, "discrimination", 200),
        "segmentation": seg,
    }


def tiny_schedules() -> dict:
    """A few seconds of training per stage, for tests: 2-3 epochs x 200 samples, FP mining after epoch 1."""
    return {
        "screening": _schedule(3, 200, 16, "screening", 32, (1,)),
        "discrimination": _schedule(2, 200, 16, "discrimination", 32),
        "segmentation": _schedule(2, 200, 16, "segmentation", 32),
    }


def training_schedules(preset: str) -> dict:
    """``{"gpu": {stage: schedule}, "cpu": {...}}`` for a preset (``paper`` uses Chen & Dou's values on both)."""
    if preset == "tiny":
        return {"gpu": tiny_schedules(), "cpu": tiny_schedules()}
    if preset == "paper":
        return {"gpu": gpu_schedules("dice"), "cpu": gpu_schedules("dice")}
    if preset == "fast":
        return {"gpu": fast_schedules(), "cpu": fast_schedules()}
    return {"gpu": gpu_schedules(), "cpu": cpu_schedules()}
