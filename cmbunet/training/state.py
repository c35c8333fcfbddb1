"""What one stage's training is given (:class:`TrainConfig`) and where it stands (:class:`TrainingState`).

The steps of ``loop.train_stage``, the mining steps of ``mining.py`` and the sampling weights of
``hard_sampling.py`` read and update one :class:`TrainingState`, so each step takes the state and at most the
epoch instead of a dozen arguments.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cmbunet.model_folder import ModelFolder
from cmbunet.plans.schema import Plans, Schedule, ScreeningSchedule
from cmbunet.training import distributed as D
from cmbunet.training.progress import TrainingLog
from cmbunet.training.samples import SampleBank
from cmbunet.training.stages import Stage


@dataclass
class TrainConfig:
    """Everything one stage of one fold needs; built by the command line."""

    stage: str
    fold: int | str
    plans: Plans
    plans_hash: str
    preprocessed_dir: Path
    model_dir: Path  # results/DatasetXXX_Name/cmbunet
    train_cases: list[str]
    val_cases: list[str]
    device: str = "cpu"
    seed: int = 0
    resume: bool = False
    num_workers: int = 1
    precision: str = "auto"  # whole-volume screening passes (mining, validation); see mining.mining_precision
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> ModelFolder:
        return ModelFolder(self.model_dir)

    @property
    def out_dir(self) -> Path:
        return self.folder.stage_dir(self.fold, self.stage)


def fp_sampling(cfg: TrainConfig, stage: Stage) -> str:
    """How ``stage`` draws its false positives: the discrimination schedule's ``fp_sampling`` there, evenly
    (``uniform``) in the other stages."""
    if stage.name != "discrimination":
        return "uniform"
    return str(cfg.plans.discrimination_schedule(cfg.device).fp_sampling)


@dataclass
class TrainingState:
    """One stage of one fold while it trains: its data, network, optimiser and progress so far."""

    info: D.DistInfo
    cfg: TrainConfig
    stage: Stage
    schedule: Schedule
    log: TrainingLog
    seed: int  # a resumed run keeps the seed it started with
    bank: SampleBank
    val_bank: SampleBank  # the training bank itself for fold ``all``
    val_rows: np.ndarray  # the fixed validation patches
    network: nn.Module  # the bare network: checkpoints, validation and mining use it
    model: nn.Module  # what trains: the network, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None  # CUDA mixed precision only
    loss_fn: Any
    history: dict[str, list]
    best: float | None = None  # best validation value of the monitored metric so far
    start_epoch: int = 0  # the first epoch still to run
    resumed: bool = False
    started: float = field(default_factory=time.time)
    #: the final mining pass's candidates ``(centres, scores)`` by case index (this rank's cases)
    final_candidates: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    #: wall time of the latest mining pass per volume screened (None before the first): the ETA's mining share
    seconds_per_screened_case: float | None = None

    @property
    def epochs(self) -> int:
        return int(self.schedule.epochs)

    @property
    def screening_schedule(self) -> ScreeningSchedule:
        """The screening schedule on this device: when and how false positives are mined (in the screening stage,
        the stage's own schedule)."""
        return self.cfg.plans.screening_schedule(self.cfg.device)

    @property
    def fp_sampling(self) -> str:
        """How false positives are drawn: the discrimination schedule's ``fp_sampling`` in that stage, evenly
        (``uniform``) in the others."""
        return fp_sampling(self.cfg, self.stage)

    @property
    def out(self) -> Path:
        return self.cfg.out_dir

    @property
    def held_out(self) -> bool:
        """Whether validation uses other cases than training (not so for fold ``all``)."""
        return self.val_bank is not self.bank
