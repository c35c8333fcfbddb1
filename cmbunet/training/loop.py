"""The one training loop shared by the screening, discrimination and segmentation stages.

Per epoch: set the poly learning rate, redraw the epoch's samples (fixed counts and proportions, RNG derived
from (seed, rank, epoch)), train on batches built by data-loading workers, validate on a fixed set of
patches, mine screening false positives when the schedule says so, and write ``checkpoint_latest.pth``
(plus ``checkpoint_best.pth`` on a new best), the log line and ``progress.png`` (titled with stage and fold;
for fold ``all``, which has no validation cases, its curves say that they come from training patches).
After the last epoch the screening stage is also validated on whole volumes (candidate sensitivity, false
positives per case), and ``checkpoint_final.pth`` is written last, so its presence means the stage is
complete.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cmbunet.errors import CMBUNetError, MissingStageError
from cmbunet.training import distributed as D
from cmbunet.training.augmentation import AugmentationParams
from cmbunet.model_folder import (STAGE_SUMMARY_FILE, VALIDATION_CANDIDATES_FILE, ModelFolder, checkpoint_file,
                                  load_checkpoint)
from cmbunet.plans.schema import Plans, Schedule, ScreeningSchedule
from cmbunet.training.checkpoint import capture_rng_state, restore_rng_state, save_checkpoint
from cmbunet.training.losses import as_class_logits, build_loss
from cmbunet.training.mining import (FALSE_POSITIVES_FILE, VALIDATION_FP_FILE, false_positive_probabilities,
                                     hardness_weights, load_false_positives, mine_into_bank, mining_cases,
                                     save_false_positives, screening_false_positives)
from cmbunet.training.progress import (TrainingLog, empty_history, epoch_summary, format_duration, plot_progress,
                                       record_epoch, stage_eta)
from cmbunet.training.samples import SampleBank, build_bank, draw_epoch_samples, draw_fixed_samples
from cmbunet.training.stages import (STAGES, EpochBatches, Stage, classification_metrics, dice_metrics, epoch_rng,
                                     screening_validation)
from cmbunet.utilities.file_io import save_json

#: Gradient norm clip (nnU-Net's value): SGD with Nesterov momentum 0.99 can otherwise blow up on an early
#: batch of hard samples.
GRAD_CLIP_NORM = 12.0


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
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> ModelFolder:
        return ModelFolder(self.model_dir)

    @property
    def out_dir(self) -> Path:
        return self.folder.stage_dir(self.fold, self.stage)


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
    return torch.autocast("cuda", dtype=torch.float16) if device.startswith("cuda") else contextlib.nullcontext()


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
            probs.append(torch.softmax(as_class_logits(out).float(), 1)[:, 1].cpu().numpy())
            labels.append(y.cpu().numpy())
        else:
            pred = torch.softmax(out.float(), 1)[:, 1] >= 0.5
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
    if not stage.mines:
        screening_false_positives(info, cfg, bank, FALSE_POSITIVES_FILE, log)
        if val_bank is not bank:
            screening_false_positives(info, cfg, val_bank, VALIDATION_FP_FILE, log)
    return bank, val_bank


# ----------------------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------------------
def _checkpoint(stage: Stage, epoch: int, net: nn.Module, opt: torch.optim.Optimizer, scheduler: dict,
                cfg: TrainConfig, best: float | None, history: dict, seed: int) -> dict:
    rng = capture_rng_state()
    rng["seed"] = int(seed)
    return {"stage": stage.name, "epoch": int(epoch), "weights": net.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": scheduler, "plans_hash": cfg.plans_hash, "best_metric": best, "history": history,
            "rng": rng}


def train_stage(info: D.DistInfo, cfg: TrainConfig) -> dict[str, list]:
    """Train one stage of one fold; returns the history. Collective calls keep the ranks in step."""
    from cmbunet.networks import build_network

    started = time.time()
    stage = STAGES[cfg.stage]
    schedule = cfg.plans.schedule(stage.name, cfg.device)
    out = cfg.out_dir
    log = TrainingLog(out / "training_log.txt", info.is_main)
    require_stages(cfg, stage)
    epochs, batch_size = int(schedule.epochs), int(schedule.batch_size)
    mining_epochs = {int(e) for e in schedule.mining_epochs} if isinstance(schedule, ScreeningSchedule) else set()
    device = info.device

    latest = checkpoint_file(out, "latest")
    ckpt = load_checkpoint(latest, cfg.plans_hash) if cfg.resume and latest.is_file() else None
    seed = int(ckpt["rng"].get("seed", cfg.seed)) if ckpt else int(cfg.seed)
    if info.is_main and ckpt is None:
        for stale in (FALSE_POSITIVES_FILE, VALIDATION_FP_FILE, VALIDATION_CANDIDATES_FILE, "training_log.txt"):
            (out / stale).unlink(missing_ok=True)
    D.barrier(info)
    log(f"=== {stage.name} stage, fold {cfg.fold}, device {device}, {info.world_size} process(es), seed {seed}"
        + (f", resuming after epoch {ckpt['epoch'] + 1}" if ckpt else "") + " ===")
    log(f"schedule: {schedule.to_dict()}")

    bank, val_bank = prepare_banks(info, cfg, stage, log)
    proportions = schedule.proportions
    val_rows = draw_fixed_samples(val_bank, int(schedule.val_samples), proportions, seed)
    log(f"validation set: {len(val_rows)} fixed patches "
        f"({', '.join(f'{k}={int((val_rows[:, 4] == i).sum())}' for k, i in (('positive', 0), ('negative', 1), ('false_positive', 2)))})")

    torch.manual_seed(seed)
    net = build_network(stage.name, cfg.plans).to(device)
    opt = build_optimizer(net, schedule)
    scaler = torch.amp.GradScaler("cuda") if device.startswith("cuda") else None
    loss_fn = build_loss(schedule)
    augmentation = AugmentationParams.from_plans(cfg.plans)
    history, best, start = empty_history(), None, 0
    torch.manual_seed(seed * 1009 + info.rank + 1)  # dropout differs between ranks

    if ckpt is not None:
        net.load_state_dict(ckpt["weights"])
        opt.load_state_dict(ckpt["optimizer"])
        if scaler is not None and "grad_scaler" in ckpt["scheduler"]:
            scaler.load_state_dict(ckpt["scheduler"]["grad_scaler"])
        history, best, start = ckpt["history"], ckpt["best_metric"], int(ckpt["epoch"]) + 1
        restore_rng_state(ckpt["rng"])
        if stage.mines and (out / FALSE_POSITIVES_FILE).is_file():
            n = load_false_positives(out / FALSE_POSITIVES_FILE, bank, max_epoch=start)
            log(f"restored {n} mined false positives")

    model: nn.Module = net
    if info.enabled:
        model = nn.parallel.DistributedDataParallel(net, device_ids=[int(device.split(":")[1])]
                                                    if device.startswith("cuda") else None)
    n_batches = batches_per_rank(schedule, info.world_size)
    hard_fps = getattr(schedule, "fp_sampling", "uniform") == "hard"  # discrimination's schedule only
    for epoch in range(start, epochs):
        t0 = time.time()
        if hard_fps and epoch > 0:  # from the weights at the start of the epoch, so a resumed run draws the same
            bank.fp_weights = hardness_weights(false_positive_probabilities(net, stage, cfg.plans, bank, device))
        lr = poly_lr(schedule.lr, epoch, epochs, schedule.poly_exponent)
        for group in opt.param_groups:
            group["lr"] = lr
        rows = draw_epoch_samples(bank, n_batches * batch_size, proportions, epoch_rng(seed, info.rank, epoch))
        train_loss = _train_one_epoch(model, stage, cfg, bank, rows, batch_size, augmentation, seed, info, epoch,
                                      epochs, opt, scaler, loss_fn)
        train_loss = D.mean_across_ranks(info, train_loss)
        val = evaluate(net, stage, cfg.plans, val_bank, val_rows, batch_size, device, loss_fn) if info.is_main else {}
        mined = 0
        if stage.mines and (epoch + 1) in mining_epochs and epoch + 1 < epochs:
            subset = mining_cases(len(bank.cases), schedule.mining_cases,
                                  sorted(mining_epochs).index(epoch + 1), seed)
            mined = mine_into_bank(info, net, bank, cfg.plans, float(schedule.mining_threshold), epoch + 1,
                                   subset, schedule.mining_keep)
            if info.is_main:
                save_false_positives(out / FALSE_POSITIVES_FILE, bank, float(schedule.mining_threshold))
                if len(subset) < len(bank.cases):
                    log(f"mining after epoch {epoch + 1} screened {len(subset)} of {len(bank.cases)} training cases "
                        f"(schedule mining_cases)")
        if info.is_main:
            metric = val.get(stage.monitor, float("nan"))
            improved = np.isfinite(metric) and (best is None or metric > best)
            best = float(metric) if improved else best
            record_epoch(history, {"epoch": epoch, "lr": lr, "train_loss": train_loss, "val_loss": val["loss"],
                              "epoch_seconds": time.time() - t0, "false_positives": len(bank.active_false_positives),
                              **{f"val_{k}": v for k, v in val.items() if k != "loss"}})
            scheduler = {"kind": "poly", "base_lr": float(schedule.lr), "epochs": epochs,
                         "exponent": float(schedule.poly_exponent), "next_epoch": epoch + 1}
            if scaler is not None:
                scheduler["grad_scaler"] = scaler.state_dict()
            ckpt_now = _checkpoint(stage, epoch, net, opt, scheduler, cfg, best, history, seed)
            # best before latest: a run killed between the two writes resumes from the previous latest and
            # repeats this epoch, instead of resuming with a best metric whose checkpoint was never written
            if improved:
                save_checkpoint(checkpoint_file(out, "best"), ckpt_now)
            save_checkpoint(latest, ckpt_now)
            plot_progress(history, out / "progress.png", stage.monitor, stage.name, cfg.fold, val_bank is not bank)
            log(epoch_summary(epoch, epochs, lr, train_loss, val, stage.monitor, improved, mined,
                              len(bank.active_false_positives), time.time() - t0)
                + f" eta {format_duration(stage_eta(history['epoch_seconds'], epochs - epoch - 1))}")
        D.barrier(info)

    if stage.mines:
        _after_screening(info, cfg, net, bank, val_bank, schedule, epochs, log)
    if info.is_main:
        final = load_checkpoint(latest, cfg.plans_hash) if latest.is_file() else None
        if final is None:
            raise CMBUNetError(f"{latest} is missing after training; cannot write the final checkpoint")
        save_checkpoint(checkpoint_file(out, "final"), final)
        log(f"{stage.name} finished: best validation {stage.monitor} = {best}")
        save_json({"stage": stage.name, "fold": str(cfg.fold), "seconds": time.time() - started,
                   "resumed": ckpt is not None, "epochs": epochs, "monitor": stage.monitor, "best": best,
                   "last_validation": {k: v[-1] for k, v in history.items() if k.startswith("val_") and v}},
                  out / STAGE_SUMMARY_FILE)
    D.barrier(info)
    return history


def _train_one_epoch(model: nn.Module, stage: Stage, cfg: TrainConfig, bank: SampleBank, rows: np.ndarray,
                     batch_size: int, augmentation: AugmentationParams, seed: int, info: D.DistInfo, epoch: int,
                     epochs: int, opt: torch.optim.Optimizer, scaler: Any, loss_fn: Any) -> float:
    """One pass over the epoch's batches, built in the background by ``cfg.num_workers`` worker processes."""
    device = info.device
    dataset = EpochBatches(stage, cfg.plans, bank, rows, batch_size, augmentation, seed, info.rank, epoch)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, shuffle=False, num_workers=cfg.num_workers,
        pin_memory=device.startswith("cuda"), prefetch_factor=2 if cfg.num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed + epoch),
    )
    model.train()
    losses = []
    bar = tqdm(loader, desc=f"{stage.name} {epoch + 1}/{epochs}", leave=False, disable=None if info.is_main else True)
    for batch in bar:
        x = batch["data"].to(device, non_blocking=True)
        y = batch["target"].to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        with autocast(device):
            loss = loss_fn(model(x), y)
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


def _after_screening(info: D.DistInfo, cfg: TrainConfig, net: nn.Module, bank: SampleBank, val_bank: SampleBank,
                     schedule: ScreeningSchedule, epochs: int, log: TrainingLog) -> None:
    """Final FP mining on the training volumes, then candidate sensitivity and FPs/case on the validation volumes."""
    out = cfg.out_dir
    threshold = float(schedule.mining_threshold)
    retired_before = int((bank.fp_dropped >= 0).sum())
    n = mine_into_bank(info, net, bank, cfg.plans, threshold, epochs, keep=schedule.mining_keep)
    if info.is_main:
        save_false_positives(out / FALSE_POSITIVES_FILE, bank, threshold)
        in_use, retired = len(bank.active_false_positives), int((bank.fp_dropped >= 0).sum())
        log(f"final mining: {n} new false positives, {in_use} in use "
            f"({in_use / max(1, len(bank.cases)):.1f} per training case)"
            + (f"; {retired - retired_before} retired that the final model scores below {threshold}"
               if retired > retired_before else ""))
        inf_threshold = float(cfg.plans.inference.screening_threshold)
        result = screening_validation(net, val_bank, cfg.plans, inf_threshold, info.device)
        where = "validation" if val_bank is not bank else "TRAINING (fold all has no validation cases)"
        log(f"screening on whole {where} volumes at threshold {inf_threshold}: candidate sensitivity "
            f"{result['sensitivity']:.3f}, {result['false_positives_per_case']:.1f} false positives per case")
        if val_bank is not bank:
            val_bank.false_positives, val_bank.fp_scores = result["fp_rows"], result["fp_scores"]
            val_bank.fp_epochs = np.full(len(result["fp_rows"]), epochs, np.int64)
            val_bank.fp_dropped = np.full(len(result["fp_rows"]), -1, np.int64)
            save_false_positives(out / VALIDATION_FP_FILE, val_bank, inf_threshold)
        save_json({k: v for k, v in result.items() if k not in ("fp_rows", "fp_scores")} | {"volumes": where},
                  out / VALIDATION_CANDIDATES_FILE)
    D.barrier(info)


def run_stages(info: D.DistInfo, configs: Iterable[TrainConfig]) -> None:
    """Entry point of every process: the stages in order."""
    for cfg in configs:
        cfg = TrainConfig(**{**cfg.__dict__, "device": info.device})
        if cfg.resume and cfg.folder.is_trained(cfg.fold, cfg.stage, "final"):
            if info.is_main:
                print(f"{cfg.stage} stage of fold {cfg.fold} is already trained ({cfg.out_dir}); skipping")
            continue
        train_stage(info, cfg)
