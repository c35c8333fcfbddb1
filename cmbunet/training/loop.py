"""The one training loop shared by the screening, discrimination and segmentation stages.

``train_stage`` is a short sequence of named steps over one :class:`~cmbunet.training.state.TrainingState`,
in the shape of nnU-Net's ``run_training``:

- ``on_train_start``: banks, the fixed validation patches, network, optimiser; on resume the checkpoint's
  weights, optimiser, history and RNG states, and the FPs mined by then.
- per epoch: ``on_epoch_start`` (FP weights under hard sampling, the poly learning rate), ``train_one_epoch``
  (the epoch's samples redrawn with fixed counts and proportions from an RNG derived from (seed, rank,
  epoch), batches built by data-loading workers), ``validate`` (a fixed set of patches), the schedule's mining
  pass (``mining.py``) and ``on_epoch_end``: ``checkpoint_latest.pth`` (plus ``checkpoint_best.pth`` on a new
  best), the log line and ``progress.png`` (titled with stage and fold; for fold ``all``, which has no
  validation cases, its curves say that they come from training patches).
- ``on_train_end``: the screening stage mines once more and is validated on whole volumes (candidate
  sensitivity, false positives per case); ``checkpoint_final.pth`` is written last, so its presence means the
  stage is complete.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cmbunet.errors import CMBUNetError, MissingStageError
from cmbunet.model_folder import STAGE_SUMMARY_FILE, VALIDATION_CANDIDATES_FILE, checkpoint_file, load_checkpoint
from cmbunet.networks import build_network
from cmbunet.plans.schema import Plans, Schedule
from cmbunet.training import distributed as D
from cmbunet.training.batches import EpochBatches, epoch_rng
from cmbunet.training.checkpoint import capture_rng_state, restore_rng_state, save_checkpoint
from cmbunet.training.false_positive_files import FALSE_POSITIVES_FILE, VALIDATION_FP_FILE
from cmbunet.training.hard_sampling import update_fp_weights
from cmbunet.training.losses import as_class_logits, build_loss
from cmbunet.training.metrics import classification_metrics, dice_metrics
from cmbunet.training.mining import (final_mining, mine_after_epoch, restore_mined_false_positives,
                                     screen_validation_volumes, screening_false_positives)
from cmbunet.training.progress import (TrainingLog, empty_history, epoch_summary, format_duration, plot_progress,
                                       record_epoch, stage_eta)
from cmbunet.training.samples import KIND_NAMES, SampleBank, build_bank, draw_epoch_samples, draw_fixed_samples
from cmbunet.training.stages import STAGE_TABLE, Stage
from cmbunet.training.state import TrainConfig, TrainingState, fp_sampling
from cmbunet.utilities.autocast import autocast_context, cmb_probability
from cmbunet.utilities.file_io import save_json

#: Gradient norm clip (nnU-Net's value): SGD with Nesterov momentum 0.99 can otherwise blow up on an early
#: batch of hard samples.
GRAD_CLIP_NORM = 12.0


# ----------------------------------------------------------------------------------------------------------
# small pieces
# ----------------------------------------------------------------------------------------------------------
def poly_lr(base_lr: float, epoch: int, epochs: int, exponent: float = 0.9) -> float:
    """``lr * (1 - epoch/epochs)^0.9`` for the 0-based ``epoch``; the last epoch runs at ``lr * (1/epochs)^0.9 > 0``."""
    return float(base_lr) * (1.0 - int(epoch) / int(epochs)) ** float(exponent)


def build_optimizer(network: nn.Module, schedule: Schedule) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum or Adam, as the schedule says."""
    name = schedule.optimizer
    lr, wd = float(schedule.lr), float(schedule.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(network.parameters(), lr=lr, momentum=float(schedule.momentum),
                               nesterov=bool(schedule.nesterov), weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(network.parameters(), lr=lr, weight_decay=wd)
    raise CMBUNetError(f"unknown optimizer '{name}' in the training schedule; expected sgd or adam")


def batches_per_rank(schedule: Schedule, world_size: int) -> int:
    """Whole batches per rank so that all ranks together see about ``samples_per_epoch`` samples."""
    return max(1, round(int(schedule.samples_per_epoch) / (int(schedule.batch_size) * world_size)))


def autocast(device: str) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA only; CPU training stays in fp32 so a resumed run is bit-identical."""
    return autocast_context(device, "fp16" if torch.device(device).type == "cuda" else "fp32")


# ----------------------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(network: nn.Module, stage: Stage, plans: Plans, bank: SampleBank, rows: np.ndarray, batch_size: int,
             device: str, loss_fn: Any) -> dict[str, float]:
    """Loss and metrics on a fixed set of unaugmented patches."""
    was_training = network.training
    network.eval()
    batches = EpochBatches(stage, plans, bank, rows, batch_size, None, 0, 0, 0)
    loss_sum, probs, labels = 0.0, [], []
    inter = pred_sum = ref_sum = 0.0
    for i in range(len(batches)):
        b = batches[i]
        x, y = b["data"].to(device), b["target"].to(device)
        with autocast(device):
            out = network(x)
        loss_sum += float(loss_fn(out, y)) * len(x)
        if stage.classifier:
            probs.append(cmb_probability(as_class_logits(out)).cpu().numpy())
            labels.append(y.cpu().numpy())
        else:
            pred = cmb_probability(out) >= 0.5
            ref = y > 0
            inter += float((pred & ref).sum())
            pred_sum += float(pred.sum())
            ref_sum += float(ref.sum())
    network.train(was_training)
    metrics = {"loss": loss_sum / max(1, len(rows))}
    if stage.classifier:
        metrics.update(classification_metrics(np.concatenate(probs), np.concatenate(labels)))
    else:
        metrics.update(dice_metrics(inter, pred_sum, ref_sum))
    return metrics


# ----------------------------------------------------------------------------------------------------------
# stage data
# ----------------------------------------------------------------------------------------------------------
def require_stages(cfg: TrainConfig, stage: Stage) -> None:
    """Refuse to start a stage whose prerequisite has no final checkpoint."""
    for needed in stage.requires:
        path = cfg.folder.checkpoint(cfg.fold, needed, "final")
        if not path.is_file():
            raise MissingStageError(
                f"the {stage.name} stage of fold {cfg.fold} needs a trained {needed} stage, but {path} is missing; "
                f"run cmbunet_train DATASET {cfg.fold} -s {needed} first (or -s all)"
            )


def prepare_banks(info: D.DistInfo, cfg: TrainConfig, stage: Stage, log: TrainingLog) -> tuple[SampleBank, SampleBank]:
    """Training and validation banks (the same bank for fold ``all``), with FPs for discrimination/segmentation."""
    bank = build_bank(cfg.preprocessed_dir, cfg.train_cases)
    val_bank = build_bank(cfg.preprocessed_dir, cfg.val_cases) if cfg.val_cases else bank
    log(f"{len(bank.cases)} training cases with {len(bank.positives)} CMBs; "
        + (f"{len(val_bank.cases)} validation cases with {len(val_bank.positives)} CMBs" if val_bank is not bank
           else "no validation cases (fold all): validating on a fixed subset of TRAINING patches"))
    for role, b in (("training", bank), ("validation", val_bank)):
        if not len(b.positives):  # say which side lacks CMBs: the message of an empty draw cannot
            raise CMBUNetError(f"the {len(b.cases)} {role} case(s) of fold {cfg.fold} hold no CMB "
                               f"({', '.join(b.names[:5])}{', ...' if len(b.cases) > 5 else ''}), so the stages "
                               f"cannot {'learn' if role == 'training' else 'be validated'}; split the cases so that "
                               "every fold's training and validation cases hold CMBs (splits_final.json of the "
                               "preprocessed dataset), or train fold all")
    if not stage.mines:
        screening_false_positives(info, cfg, bank, FALSE_POSITIVES_FILE, log,
                                  final_scores=fp_sampling(cfg, stage) == "candidates")
        if val_bank is not bank:
            screening_false_positives(info, cfg, val_bank, VALIDATION_FP_FILE, log)
    return bank, val_bank


# ----------------------------------------------------------------------------------------------------------
# the steps
# ----------------------------------------------------------------------------------------------------------
@dataclass
class EpochResult:
    """What one epoch produced, for its history entry, checkpoint and log line."""

    epoch: int
    lr: float
    train_loss: float
    val: dict[str, float]  # empty on ranks other than 0
    mined: int
    started: float


def previous_run(info: D.DistInfo, cfg: TrainConfig) -> dict | None:
    """The checkpoint to continue from (``--c`` and a ``checkpoint_latest.pth``); a fresh run first removes the
    files an earlier run of the stage left that it would otherwise append to or mix with its own."""
    latest = checkpoint_file(cfg.out_dir, "latest")
    ckpt = load_checkpoint(latest, cfg.plans_hash) if cfg.resume and latest.is_file() else None
    if info.is_main and ckpt is None:
        for stale in (FALSE_POSITIVES_FILE, VALIDATION_FP_FILE, VALIDATION_CANDIDATES_FILE, "training_log.txt"):
            (cfg.out_dir / stale).unlink(missing_ok=True)
    D.barrier(info)
    return ckpt


def on_train_start(info: D.DistInfo, cfg: TrainConfig) -> TrainingState:
    """Everything before the first epoch still to run. The RNG calls keep their order, so the same seed gives
    the same weights."""
    started = time.time()
    stage = STAGE_TABLE[cfg.stage]
    schedule = cfg.plans.schedule(stage.name, cfg.device)
    log = TrainingLog(cfg.out_dir / "training_log.txt", info.is_main)
    require_stages(cfg, stage)
    ckpt = previous_run(info, cfg)
    seed = int(ckpt["rng"].get("seed", cfg.seed)) if ckpt else int(cfg.seed)
    log(f"=== {stage.name} stage, fold {cfg.fold}, device {info.device}, {info.world_size} process(es), seed {seed}"
        + (f", resuming after epoch {ckpt['epoch'] + 1}" if ckpt else "") + " ===")
    log(f"schedule: {schedule.to_dict()}")

    bank, val_bank = prepare_banks(info, cfg, stage, log)
    val_rows = draw_fixed_samples(val_bank, int(schedule.val_samples), schedule.proportions, seed)
    log(f"validation set: {len(val_rows)} fixed patches "
        f"({', '.join(f'{k}={int((val_rows[:, 4] == i).sum())}' for k, i in KIND_NAMES.items())})")

    torch.manual_seed(seed)
    net = build_network(stage.name, cfg.plans).to(info.device)
    state = TrainingState(
        info, cfg, stage, schedule, log, seed, bank, val_bank, val_rows, network=net, model=net,
        optimizer=build_optimizer(net, schedule),
        scaler=torch.amp.GradScaler("cuda") if info.device.startswith("cuda") else None,
        loss_fn=build_loss(schedule), history=empty_history(), started=started)
    torch.manual_seed(seed * 1009 + info.rank + 1)  # dropout differs between ranks
    if ckpt is not None:
        resume(state, ckpt)
    if info.enabled:
        device = info.device
        state.model = nn.parallel.DistributedDataParallel(net, device_ids=[int(device.split(":")[1])]
                                                          if device.startswith("cuda") else None)
    return state


def resume(state: TrainingState, ckpt: dict) -> None:
    """Continue after the checkpoint's epoch as if never interrupted: weights, optimiser momentum, grad scaler,
    history, best metric, RNG states and the FPs mined by then."""
    state.network.load_state_dict(ckpt["weights"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    if state.scaler is not None and "grad_scaler" in ckpt["scheduler"]:
        state.scaler.load_state_dict(ckpt["scheduler"]["grad_scaler"])
    state.history, state.best = ckpt["history"], ckpt["best_metric"]
    state.start_epoch, state.resumed = int(ckpt["epoch"]) + 1, True
    restore_rng_state(ckpt["rng"])
    restore_mined_false_positives(state)


def on_epoch_start(state: TrainingState, epoch: int) -> float:
    """FP weights under hard sampling, then the epoch's poly learning rate, which it returns."""
    update_fp_weights(state, epoch)
    lr = poly_lr(state.schedule.lr, epoch, state.epochs, state.schedule.poly_exponent)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    return lr


def train_one_epoch(state: TrainingState, epoch: int) -> float:
    """One pass over the epoch's freshly drawn samples, in batches built in the background by
    ``cfg.num_workers`` worker processes; returns this rank's mean loss."""
    info, cfg, schedule, device = state.info, state.cfg, state.schedule, state.info.device
    batch_size = int(schedule.batch_size)
    n = batches_per_rank(schedule, info.world_size) * batch_size
    rows = draw_epoch_samples(state.bank, n, schedule.proportions, epoch_rng(state.seed, info.rank, epoch))
    dataset = EpochBatches(state.stage, cfg.plans, state.bank, rows, batch_size, cfg.plans.augmentation, state.seed,
                           info.rank, epoch)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, shuffle=False, num_workers=cfg.num_workers,
        pin_memory=device.startswith("cuda"), prefetch_factor=2 if cfg.num_workers > 0 else None,
        generator=torch.Generator().manual_seed(state.seed + epoch),
    )
    model, opt, scaler = state.model, state.optimizer, state.scaler
    model.train()
    losses = []
    bar = tqdm(loader, desc=f"{state.stage.name} {epoch + 1}/{state.epochs}", leave=False,
               disable=None if info.is_main else True)
    for batch in bar:
        x = batch["data"].to(device, non_blocking=True)
        y = batch["target"].to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        with autocast(device):
            loss = state.loss_fn(model(x), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP_NORM)
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP_NORM)
            opt.step()
        losses.append(loss.detach())
        bar.set_postfix(loss=f"{float(losses[-1]):.4f}")
    return float(torch.stack(losses).mean()) if losses else float("nan")


def validate(state: TrainingState) -> dict[str, float]:
    """Loss and metrics on the fixed validation patches (rank 0; the other ranks get an empty dict)."""
    if not state.info.is_main:
        return {}
    return evaluate(state.network, state.stage, state.cfg.plans, state.val_bank, state.val_rows,
                    int(state.schedule.batch_size), state.info.device, state.loss_fn)


def checkpoint(state: TrainingState, epoch: int) -> dict:
    """The checkpoint after ``epoch``: weights, optimiser, schedule position, history and RNG states."""
    schedule = state.schedule
    scheduler = {"kind": "poly", "base_lr": float(schedule.lr), "epochs": state.epochs,
                 "exponent": float(schedule.poly_exponent), "next_epoch": epoch + 1}
    if state.scaler is not None:
        scheduler["grad_scaler"] = state.scaler.state_dict()
    rng = capture_rng_state()
    rng["seed"] = int(state.seed)
    return {"stage": state.stage.name, "epoch": int(epoch), "weights": state.network.state_dict(),
            "optimizer": state.optimizer.state_dict(), "scheduler": scheduler, "plans_hash": state.cfg.plans_hash,
            "best_metric": state.best, "history": state.history, "rng": rng}


def on_epoch_end(state: TrainingState, result: EpochResult) -> None:
    """Rank 0: the history entry, the checkpoints, ``progress.png`` and the log line."""
    stage, bank, out, epoch = state.stage, state.bank, state.out, result.epoch
    metric = result.val.get(stage.monitor, float("nan"))
    improved = bool(np.isfinite(metric) and (state.best is None or metric > state.best))
    state.best = float(metric) if improved else state.best
    record_epoch(state.history, {
        "epoch": epoch, "lr": result.lr, "train_loss": result.train_loss, "val_loss": result.val["loss"],
        "epoch_seconds": time.time() - result.started, "false_positives": len(bank.active_false_positives),
        **{f"val_{k}": v for k, v in result.val.items() if k != "loss"}})
    ckpt = checkpoint(state, epoch)
    # best before latest: a run killed between the two writes resumes from the previous latest and
    # repeats this epoch, instead of resuming with a best metric whose checkpoint was never written
    if improved:
        save_checkpoint(checkpoint_file(out, "best"), ckpt)
    save_checkpoint(checkpoint_file(out, "latest"), ckpt)
    plot_progress(state.history, out / "progress.png", stage.monitor, stage.name, state.cfg.fold, state.held_out)
    state.log(epoch_summary(epoch, state.epochs, result.lr, result.train_loss, result.val, stage.monitor, improved,
                            result.mined, len(bank.active_false_positives), time.time() - result.started)
              + f" eta {stage_eta_text(state, epoch)}")


def cases_still_to_screen(state: TrainingState, epoch: int) -> int:
    """Whole volumes the screening stage will still screen after ``epoch``: the intermediate mining passes left,
    the final pass over every training case, and the validation volumes (none more for fold ``all``, whose
    validation reuses the final pass)."""
    if not state.stage.mines:
        return 0
    schedule, n = state.screening_schedule, len(state.bank.cases)
    per_pass = min(n, int(schedule.mining_cases)) if schedule.mining_cases else n
    later = [e for e in sorted({int(e) for e in schedule.mining_epochs}) if epoch + 1 < e < state.epochs]
    return len(later) * per_pass + n + (len(state.val_bank.cases) if state.val_bank is not state.bank else 0)


def stage_eta_text(state: TrainingState, epoch: int) -> str:
    """The stage's time left after ``epoch``, whole-volume screening passes included once one has been timed."""
    to_screen = cases_still_to_screen(state, epoch)
    eta = stage_eta(state.history["epoch_seconds"], state.epochs - epoch - 1, to_screen,
                    state.seconds_per_screened_case)
    pending = to_screen and state.seconds_per_screened_case is None
    return format_duration(eta) + (f" + screening of {to_screen} volumes" if pending else "")


def on_train_end(state: TrainingState) -> None:
    """Screening: the final mining pass and whole-volume validation. Then (rank 0) ``checkpoint_final.pth``, a
    copy of the last epoch's, written last so that it marks the stage complete, and ``stage_summary.json``."""
    info, stage, out = state.info, state.stage, state.out
    if stage.mines:
        final_mining(state)
        if info.is_main:
            screen_validation_volumes(state)
        D.barrier(info)
    if info.is_main:
        latest = checkpoint_file(out, "latest")
        final = load_checkpoint(latest, state.cfg.plans_hash) if latest.is_file() else None
        if final is None:
            raise CMBUNetError(f"{latest} is missing after training; cannot write the final checkpoint")
        save_checkpoint(checkpoint_file(out, "final"), final)
        state.log(f"{stage.name} finished: best validation {stage.monitor} = {state.best}")
        save_json({"stage": stage.name, "fold": str(state.cfg.fold), "seconds": time.time() - state.started,
                   "resumed": state.resumed, "epochs": state.epochs, "monitor": stage.monitor, "best": state.best,
                   "last_validation": {k: v[-1] for k, v in state.history.items() if k.startswith("val_") and v}},
                  out / STAGE_SUMMARY_FILE)
    D.barrier(info)


# ----------------------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------------------
def train_stage(info: D.DistInfo, cfg: TrainConfig) -> dict[str, list]:
    """Train one stage of one fold; returns the history. Collective calls keep the ranks in step."""
    state = on_train_start(info, cfg)
    for epoch in range(state.start_epoch, state.epochs):
        started = time.time()
        lr = on_epoch_start(state, epoch)
        train_loss = D.mean_across_ranks(info, train_one_epoch(state, epoch))
        val = validate(state)
        mined = mine_after_epoch(state, epoch)
        if info.is_main:
            on_epoch_end(state, EpochResult(epoch, lr, train_loss, val, mined, started))
        D.barrier(info)
    on_train_end(state)
    return state.history


def run_stages(info: D.DistInfo, configs: Iterable[TrainConfig]) -> None:
    """Entry point of every process: the stages in order."""
    for cfg in configs:
        cfg = TrainConfig(**{**cfg.__dict__, "device": info.device})
        if cfg.resume and cfg.folder.is_trained(cfg.fold, cfg.stage, "final"):
            if info.is_main:
                print(f"{cfg.stage} stage of fold {cfg.fold} is already trained ({cfg.out_dir}); skipping")
            continue
        train_stage(info, cfg)
