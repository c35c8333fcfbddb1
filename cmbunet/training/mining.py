"""Hard-negative mining: the screening false positives (FPs) that every stage trains on.

An FP is a screening candidate without a CMB voxel in its central 2x2x2 block, found by running the screening
FCN over the fold's training volumes. The screening stage mines them itself (after the schedule's
``mining_epochs``, then once more with the final model) and writes them to ``false_positives.json``;
discrimination and segmentation load that list (or mine it with the final screening model when it is missing).
The files' format is :mod:`cmbunet.training.false_positive_files`.

- With ``mining_keep="all"`` the FPs accumulate over the mining passes (Chen & Dou's code). With ``"hard"`` each pass
  also re-scores the pool on the volumes it screens and retires the FPs the current model no longer scores above
  the mining threshold: the early passes of a weak model find thousands of easy FPs per case, which would
  otherwise crowd out the mimics the final model still fires on, and those are what discrimination meets at
  inference. Retired FPs stay in the list, so a resumed run sees the pool exactly as it was.
- ``mining_cases`` limits an intermediate pass to a window of the cases moving through one seeded permutation.
- How often each FP is drawn for training is :mod:`cmbunet.training.hard_sampling`.

Passes are split across ranks by case and gathered, so every rank's bank holds the same FPs.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cmbunet.errors import CMBUNetError
from cmbunet.inference.candidates import find_candidates
from cmbunet.inference.screening import screening_score_map
from cmbunet.model_folder import VALIDATION_CANDIDATES_FILE
from cmbunet.plans.schema import Plans
from cmbunet.training import distributed as D
from cmbunet.training.false_positive_files import (FALSE_POSITIVES_FILE, VALIDATION_FP_FILE, load_false_positives,
                                                   save_false_positives)
from cmbunet.training.progress import TrainingLog
from cmbunet.training.samples import SampleBank, touches_cmb
from cmbunet.training.screening_validation import screening_validation
from cmbunet.training.state import TrainConfig, TrainingState
from cmbunet.utilities.autocast import ForwardOptions
from cmbunet.utilities.cpu_features import resolve_precision
from cmbunet.utilities.file_io import load_json, save_json


# ----------------------------------------------------------------------------------------------------------
# one pass over the volumes, and merging its FPs into the bank's
# ----------------------------------------------------------------------------------------------------------
def mining_precision(device: str | torch.device = "cpu", requested: str = "auto") -> str:
    """The arithmetic of whole-volume screening passes during training (``cmbunet_train --precision``). ``auto``:
    bf16 on a CPU with bfloat16 dot products (about twice as fast; a pass over a VALDO-sized volume is minutes in
    float32), float16 on CUDA, float32 elsewhere. Deterministic on one machine, so a resumed run mines the same
    false positives; ``fp32`` mines the same ones on every CPU."""
    return resolve_precision(requested, torch.device(device).type)[0]


def mine_false_positives(network: nn.Module, bank: SampleBank, plans: Plans, threshold: float | None,
                         device: str | torch.device = "cpu", case_indices: Sequence[int] | None = None,
                         candidates: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
                         progress: bool = True, precision: str = "auto") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Screening candidates with no CMB voxel in their central 2x2x2 block: rows ``(F, 4)`` and scores, plus the
    current score of every FP already in the bank (NaN for FPs of cases not screened now). ``threshold`` None
    only re-scores the bank's FPs: no candidates are looked for, and no rows are returned.

    ``candidates``, when given, receives every case's candidates ``(centres, scores)`` by case index, so that a
    later step needing the same pass (whole-volume validation of fold ``all``) does not screen again. ``progress``
    shows a bar over the cases on a terminal (a pass over VALDO-sized volumes takes minutes). ``precision``: see
    :func:`mining_precision`."""
    rows, scores = [], []
    current = np.full(len(bank.false_positives), np.nan, dtype=np.float32)
    stride = np.asarray(plans.screening.fcn_stride, dtype=np.int64)
    indices = range(len(bank.cases)) if case_indices is None else case_indices
    precision = mining_precision(device, precision)
    for i in tqdm(indices, desc=f"screening training volumes ({precision})", unit="case", leave=False,
                  disable=None if progress else True):
        case = bank.cases[i]
        score_map = screening_score_map(network, np.asarray(case.data, dtype=np.float32), plans,
                                        ForwardOptions(device, precision))
        if threshold is not None:
            centres, s = find_candidates(score_map, plans, threshold=threshold)
            if candidates is not None:
                candidates[int(i)] = (centres, s)
            fp = ~touches_cmb(case.seg, centres) if len(centres) else np.zeros(0, bool)
            rows.append(np.column_stack([np.full(int(fp.sum()), i), centres[fp]]))
            scores.append(s[fp])
        mine = np.flatnonzero(bank.false_positives[:, 0] == i)
        if len(mine):  # score voxel j is the block centred at input voxel stride * j
            j = np.clip(np.rint(bank.false_positives[mine, 1:] / stride).astype(np.int64), 0,
                        np.asarray(score_map.shape) - 1)
            current[mine] = score_map[tuple(j.T)]
    if not rows:
        return np.zeros((0, 4), np.int64), np.zeros(0, np.float32), current
    return (np.concatenate(rows).astype(np.int64).reshape(-1, 4), np.concatenate(scores).astype(np.float32),
            current)


def retire_easy_false_positives(bank: SampleBank, current: np.ndarray, threshold: float, epoch: int) -> int:
    """Retire the bank's FPs in use whose current score is below ``threshold`` (NaN: not re-scored, kept);
    returns how many."""
    if len(bank.fp_dropped) != len(bank.false_positives):
        bank.fp_dropped = np.full(len(bank.false_positives), -1, np.int64)
    easy = (np.nan_to_num(np.asarray(current, dtype=np.float32), nan=np.inf) < threshold) & (bank.fp_dropped < 0)
    bank.fp_dropped[easy] = int(epoch)
    return int(easy.sum())


def merge_false_positives(bank: SampleBank, rows: np.ndarray, scores: np.ndarray, epoch: int,
                          current: np.ndarray | None = None) -> int:
    """Add newly mined rows to the bank, dropping exact duplicates (sort-based, O(N log N)); returns how many were new.

    A duplicate keeps its first mining epoch and score, so the list only ever grows; a retired FP found again is
    back in use. ``current`` (the pass's score of every FP already in the bank, from the final screening model)
    makes this pass the final one: it becomes the bank's ``fp_final_scores``, and each new FP's own score its
    final score.
    """
    before = len(bank.false_positives)
    rows = rows.astype(np.int64).reshape(-1, 4)
    dropped = bank.fp_dropped if len(bank.fp_dropped) == before else np.full(before, -1, np.int64)
    if current is not None:
        final = np.concatenate([np.asarray(current, np.float32), scores.astype(np.float32)])
    else:
        known = bank.fp_final_scores if len(bank.fp_final_scores) == before else np.full(before, np.nan, np.float32)
        final = np.concatenate([known, np.full(len(rows), np.nan, np.float32)])
    all_rows = np.concatenate([bank.false_positives, rows])
    all_scores = np.concatenate([bank.fp_scores, scores.astype(np.float32)])
    all_epochs = np.concatenate([bank.fp_epochs, np.full(len(rows), int(epoch), np.int64)])
    all_dropped = np.concatenate([dropped, np.full(len(rows), -1, np.int64)])
    _, first, inverse = np.unique(all_rows, axis=0, return_index=True, return_inverse=True)
    found_again = np.zeros(len(first), bool)
    found_again[inverse.reshape(-1)[before:]] = True
    all_dropped[first[found_again]] = -1
    first = np.sort(first)  # keep the order of discovery
    bank.false_positives, bank.fp_scores, bank.fp_epochs = all_rows[first], all_scores[first], all_epochs[first]
    bank.fp_dropped, bank.fp_final_scores = all_dropped[first], final[first]
    return len(first) - before


# ----------------------------------------------------------------------------------------------------------
# passes across ranks and epochs
# ----------------------------------------------------------------------------------------------------------
def mining_cases(num_cases: int, per_pass: int | None, pass_index: int, seed: int) -> list[int]:
    """Cases that intermediate mining pass ``pass_index`` screens: all of them, or ``per_pass`` of them.

    A subset is a window moving through one seeded permutation of the cases, so successive passes screen
    different cases and every case comes round before any is screened twice. Depends on nothing but its
    arguments, so a resumed run mines the same cases.
    """
    if not per_pass or int(per_pass) >= num_cases:
        return list(range(num_cases))
    order = np.random.default_rng(int(seed) + 7919).permutation(num_cases)
    start = int(pass_index) * int(per_pass)
    return sorted(int(order[(start + k) % num_cases]) for k in range(int(per_pass)))


def mine_into_bank(info: D.DistInfo, network: nn.Module, bank: SampleBank, plans: Plans, threshold: float,
                   epoch_tag: int, cases: Sequence[int] | None = None, keep: str = "all",
                   candidates: dict[int, tuple[np.ndarray, np.ndarray]] | None = None, precision: str = "auto",
                   final: bool = False) -> int:
    """Mine false positives over the bank's volumes (``cases``, default all; split across ranks) and merge them
    into every rank's bank; with ``keep="hard"`` first retire the pool's FPs that now score below ``threshold``.
    ``final``: the pass of the final screening model over every case, whose scores of the whole pool become the
    bank's ``fp_final_scores``. ``candidates``: see :func:`mine_false_positives` (this rank's cases only);
    ``precision``: see :func:`mining_precision`."""
    cases = list(range(len(bank.cases))) if cases is None else list(cases)
    indices = cases[info.rank::info.world_size]
    rows, scores, current = mine_false_positives(network, bank, plans, threshold, info.device, indices, candidates,
                                                 progress=info.is_main, precision=precision)
    gathered = D.all_gather_objects(info, (rows, scores, current))
    rows = np.concatenate([g[0] for g in gathered]).reshape(-1, 4)
    scores = np.concatenate([g[1] for g in gathered])
    current = _gathered_current(g[2] for g in gathered)
    if keep == "hard":
        retire_easy_false_positives(bank, current, threshold, epoch_tag)
    elif keep != "all":
        raise CMBUNetError(f"unknown mining_keep '{keep}' in the screening schedule; expected 'all' or 'hard'")
    return merge_false_positives(bank, rows, scores, epoch_tag, current if final else None)


def _gathered_current(parts) -> np.ndarray:  # noqa: ANN001
    """Each pool FP was re-scored by one rank at most; the others hold NaN for it."""
    stacked = np.stack(list(parts))
    return np.where(np.isnan(stacked).all(axis=0), np.nan,
                    np.nanmax(np.nan_to_num(stacked, nan=-np.inf), axis=0)).astype(np.float32)


def rescore_false_positives(info: D.DistInfo, network: nn.Module, bank: SampleBank, plans: Plans,
                            precision: str = "auto") -> None:
    """Set the bank's ``fp_final_scores`` with one pass of the final screening ``network`` over its volumes (for
    FP lists written before final scores were recorded); the pool itself is left as it is."""
    indices = list(range(len(bank.cases)))[info.rank::info.world_size]
    _, _, current = mine_false_positives(network, bank, plans, None, info.device, indices, progress=info.is_main,
                                         precision=precision)
    bank.fp_final_scores = _gathered_current(D.all_gather_objects(info, current))


def screening_false_positives(info: D.DistInfo, cfg: TrainConfig, bank: SampleBank, file_name: str,
                              log: TrainingLog, final_scores: bool = False) -> None:
    """Load the screening stage's FP list into ``bank``; if it is missing, mine it with the final screening model.
    ``final_scores``: the final screening model's score of every FP is needed; a list written without them (by an
    older version) gets them from one pass over the volumes, and is saved with them."""
    scr_dir = cfg.folder.stage_dir(cfg.fold, "screening")
    path = scr_dir / file_name
    if path.is_file():
        n = load_false_positives(path, bank)
        log(f"loaded {n} screening false positives for {len(bank.cases)} cases from {path}")
        if final_scores and len(bank.fp_final_scores) and np.isnan(bank.fp_final_scores).all():
            log(f"{path.name} holds no final screening scores: screening the training volumes once for them")
            net = cfg.folder.load_network(cfg.fold, "screening", cfg.plans, info.device)
            rescore_false_positives(info, net, bank, cfg.plans, cfg.precision)
            if info.is_main:
                save_false_positives(path, bank, float(load_json(path)["mining_threshold"]))
        return
    log(f"{path} is missing: mining false positives with the final screening model")
    net = cfg.folder.load_network(cfg.fold, "screening", cfg.plans, info.device)
    threshold = D.broadcast_object(info, _mining_threshold(cfg))
    n = mine_into_bank(info, net, bank, cfg.plans, threshold, -1, precision=cfg.precision, final=True)
    if info.is_main:
        save_false_positives(path, bank, threshold)
    log(f"mined {n} false positives")


def _mining_threshold(cfg: TrainConfig) -> float:
    return float(cfg.plans.screening_schedule(cfg.device).mining_threshold)


# ----------------------------------------------------------------------------------------------------------
# the steps of the training loop
# ----------------------------------------------------------------------------------------------------------
def restore_mined_false_positives(state: TrainingState) -> None:
    """On resume, the screening FPs mined by the epoch the run continues after (later ones belong to epochs to
    be repeated)."""
    path = state.out / FALSE_POSITIVES_FILE
    if state.stage.mines and path.is_file():
        n = load_false_positives(path, state.bank, max_epoch=state.start_epoch)
        state.log(f"restored {n} mined false positives")


def mine_after_epoch(state: TrainingState, epoch: int) -> int:
    """The screening schedule's mining pass after ``epoch`` when it has one; returns how many FPs were new.

    None after the last epoch: :func:`final_mining` screens every case with the final weights then.
    """
    if not state.stage.mines:
        return 0
    schedule, bank, done = state.screening_schedule, state.bank, epoch + 1
    passes = sorted({int(e) for e in schedule.mining_epochs})
    if done not in passes or done >= state.epochs:
        return 0
    threshold = float(schedule.mining_threshold)
    subset = mining_cases(len(bank.cases), schedule.mining_cases, passes.index(done), state.seed)
    started = time.perf_counter()
    mined = mine_into_bank(state.info, state.network, bank, state.cfg.plans, threshold, done, subset,
                           schedule.mining_keep, precision=state.cfg.precision)
    state.seconds_per_screened_case = (time.perf_counter() - started) / max(1, len(subset))
    if state.info.is_main:
        save_false_positives(state.out / FALSE_POSITIVES_FILE, bank, threshold)
        if len(subset) < len(bank.cases):
            state.log(f"mining after epoch {done} screened {len(subset)} of {len(bank.cases)} training cases "
                      f"(schedule mining_cases)")
    return mined


def final_mining(state: TrainingState) -> None:
    """The last pass, over every training volume with the final screening weights."""
    schedule, bank = state.screening_schedule, state.bank
    threshold = float(schedule.mining_threshold)
    retired_before = int((bank.fp_dropped >= 0).sum())
    state.final_candidates.clear()
    n = mine_into_bank(state.info, state.network, bank, state.cfg.plans, threshold, state.epochs,
                       keep=schedule.mining_keep, candidates=state.final_candidates, precision=state.cfg.precision,
                       final=True)
    if state.info.is_main:
        save_false_positives(state.out / FALSE_POSITIVES_FILE, bank, threshold)
        in_use, retired = len(bank.active_false_positives), int((bank.fp_dropped >= 0).sum())
        state.log(f"final mining: {n} new false positives, {in_use} in use "
                  f"({in_use / max(1, len(bank.cases)):.1f} per training case)"
                  + (f"; {retired - retired_before} retired that the final model scores below {threshold}"
                     if retired > retired_before else ""))


def screen_validation_volumes(state: TrainingState) -> None:
    """Candidate sensitivity and FPs per case of the final screening model on whole validation volumes (rank 0).

    Their FPs become ``validation_false_positives.json``, the validation negatives of the later stages. For fold
    ``all`` the volumes are the training volumes, which the final mining pass has just screened with the same
    weights: its candidates are reused wherever the counting threshold is at least the mining threshold. They are
    counted at :meth:`Plans.candidate_count_threshold` (the mining threshold, unless inference screens lower).
    """
    cfg, val_bank, out = state.cfg, state.val_bank, state.out
    count_threshold = cfg.plans.candidate_count_threshold(state.info.device)
    reuse = (state.final_candidates if val_bank is state.bank
             and count_threshold >= float(state.screening_schedule.mining_threshold) else None)
    result = screening_validation(state.network, val_bank, cfg.plans, count_threshold, state.info.device,
                                  precision=mining_precision(state.info.device, cfg.precision), candidates=reuse)
    where = "validation" if state.held_out else "TRAINING (fold all has no validation cases)"
    state.log(f"screening on whole {where} volumes at threshold {count_threshold}: candidate sensitivity "
              f"{result['sensitivity']:.3f}, {result['false_positives_per_case']:.1f} false positives per case")
    if state.held_out:
        val_bank.false_positives, val_bank.fp_scores = result["fp_rows"], result["fp_scores"]
        val_bank.fp_epochs = np.full(len(result["fp_rows"]), state.epochs, np.int64)
        val_bank.fp_dropped = np.full(len(result["fp_rows"]), -1, np.int64)
        save_false_positives(out / VALIDATION_FP_FILE, val_bank, count_threshold)
    save_json({k: v for k, v in result.items() if k not in ("fp_rows", "fp_scores")} | {"volumes": where},
              out / VALIDATION_CANDIDATES_FILE)
