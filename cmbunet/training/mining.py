"""Hard-negative mining: the screening false positives (FPs) that every stage trains on.

An FP is a screening candidate without a CMB voxel in its central 2x2x2 block, found by running the screening
FCN over the fold's training volumes. The screening stage mines them itself (after the schedule's
``mining_epochs``, then once more with the final model) and writes them to ``false_positives.json``;
discrimination and segmentation load that list (or mine it with the final screening model when it is missing).

- With ``mining_keep="all"`` the FPs accumulate over the mining passes (Chen & Dou's code). With ``"hard"`` each pass
  also re-scores the pool on the volumes it screens and retires the FPs the current model no longer scores above
  the mining threshold: the early passes of a weak model find thousands of easy FPs per case, which would
  otherwise crowd out the mimics the final model still fires on, and those are what discrimination meets at
  inference. Retired FPs stay in the list, so a resumed run sees the pool exactly as it was.
- ``mining_cases`` limits an intermediate pass to a window of the cases moving through one seeded permutation.
- With the discrimination schedule's ``fp_sampling="hard"`` FPs are drawn in proportion to the network's current
  CMB probability of each (:func:`hardness_weights`).

Passes are split across ranks by case and gathered, so every rank's bank holds the same FPs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence, cast

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cmbunet.errors import CMBUNetError, InputError
from cmbunet.inference.candidates import find_candidates
from cmbunet.inference.screening import screening_score_map
from cmbunet.plans.schema import Plans, ScreeningSchedule
from cmbunet.training import distributed as D
from cmbunet.training.losses import as_class_logits
from cmbunet.model_folder import VALIDATION_CANDIDATES_FILE
from cmbunet.training.progress import TrainingLog
from cmbunet.training.samples import SampleBank, touches_cmb
from cmbunet.training.stages import Stage, screening_validation
from cmbunet.training.state import TrainConfig, TrainingState
from cmbunet.utilities.autocast import ForwardOptions, batch_probability, cmb_probability
from cmbunet.utilities.cpu_features import resolve_precision
from cmbunet.utilities.file_io import load_json, save_json
from cmbunet.utilities.patches import extract_patches

FALSE_POSITIVES_FILE = "false_positives.json"
VALIDATION_FP_FILE = "validation_false_positives.json"


# ----------------------------------------------------------------------------------------------------------
# one pass over the volumes, and the bank's FP list
# ----------------------------------------------------------------------------------------------------------
def mining_precision(device: str | torch.device = "cpu", requested: str = "auto") -> str:
    """The arithmetic of whole-volume screening passes during training (``cmbunet_train --precision``). ``auto``:
    bf16 on a CPU with bfloat16 dot products (about twice as fast; a pass over a VALDO-sized volume is minutes in
    float32), float16 on CUDA, float32 elsewhere. Deterministic on one machine, so a resumed run mines the same
    false positives; ``fp32`` mines the same ones on every CPU."""
    return resolve_precision(requested, torch.device(device).type)[0]


def mine_false_positives(network: nn.Module, bank: SampleBank, plans: Plans, threshold: float,
                         device: str | torch.device = "cpu", case_indices: Sequence[int] | None = None,
                         candidates: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
                         progress: bool = True, precision: str = "auto") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Screening candidates with no CMB voxel in their central 2x2x2 block: rows ``(F, 4)`` and scores, plus the
    current score of every FP already in the bank (NaN for FPs of cases not screened now).

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


def merge_false_positives(bank: SampleBank, rows: np.ndarray, scores: np.ndarray, epoch: int) -> int:
    """Add newly mined rows to the bank, dropping exact duplicates (sort-based, O(N log N)); returns how many were new.

    A duplicate keeps its first mining epoch and score, so the list only ever grows; a retired FP found again is
    back in use.
    """
    before = len(bank.false_positives)
    rows = rows.astype(np.int64).reshape(-1, 4)
    dropped = bank.fp_dropped if len(bank.fp_dropped) == before else np.full(before, -1, np.int64)
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
    bank.fp_dropped = all_dropped[first]
    return len(first) - before


def save_false_positives(path: str | Path, bank: SampleBank, threshold: float) -> None:
    """``false_positives.json``: each mined FP with its case, centre, score and the epochs completed when mined;
    retired FPs (``mining_keep="hard"``) follow with the epoch they were retired at."""
    names = bank.names
    dropped = bank.fp_dropped if len(bank.fp_dropped) == len(bank.false_positives) else \
        np.full(len(bank.false_positives), -1, np.int64)
    fps = [{"case": names[r[0]], "center": r[1:].tolist(), "score": float(s), "epoch": int(e)}
           | ({"retired": int(d)} if d >= 0 else {})
           for r, s, e, d in zip(bank.false_positives, bank.fp_scores, bank.fp_epochs, dropped)]
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
    # an FP retired after max_epoch was still in use then (exact resume)
    bank.fp_dropped = np.array([int(f.get("retired", -1)) if max_epoch is None or int(f.get("retired", -1)) <= max_epoch
                                else -1 for f in keep], dtype=np.int64)
    return int((bank.fp_dropped < 0).sum())


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
                   candidates: dict[int, tuple[np.ndarray, np.ndarray]] | None = None, precision: str = "auto") -> int:
    """Mine false positives over the bank's volumes (``cases``, default all; split across ranks) and merge them
    into every rank's bank; with ``keep="hard"`` first retire the pool's FPs that now score below ``threshold``.
    ``candidates``: see :func:`mine_false_positives` (this rank's cases only); ``precision``: see
    :func:`mining_precision`."""
    cases = list(range(len(bank.cases))) if cases is None else list(cases)
    indices = cases[info.rank::info.world_size]
    rows, scores, current = mine_false_positives(network, bank, plans, threshold, info.device, indices, candidates,
                                                 progress=info.is_main, precision=precision)
    gathered = D.all_gather_objects(info, (rows, scores, current))
    rows = np.concatenate([g[0] for g in gathered]).reshape(-1, 4)
    scores = np.concatenate([g[1] for g in gathered])
    if keep == "hard":  # each pool FP was re-scored by one rank at most; the others hold NaN for it
        stacked = np.stack([g[2] for g in gathered])
        current = np.where(np.isnan(stacked).all(axis=0), np.nan, np.nanmax(np.nan_to_num(stacked, nan=-np.inf), axis=0))
        retire_easy_false_positives(bank, current, threshold, epoch_tag)
    elif keep != "all":
        raise CMBUNetError(f"unknown mining_keep '{keep}' in the screening schedule; expected 'all' or 'hard'")
    return merge_false_positives(bank, rows, scores, epoch_tag)


def screening_false_positives(info: D.DistInfo, cfg: TrainConfig, bank: SampleBank, file_name: str,
                              log: TrainingLog) -> None:
    """Load the screening stage's FP list into ``bank``; if it is missing, mine it with the final screening model."""
    scr_dir = cfg.folder.stage_dir(cfg.fold, "screening")
    path = scr_dir / file_name
    if path.is_file():
        n = load_false_positives(path, bank)
        log(f"loaded {n} screening false positives for {len(bank.cases)} cases from {path}")
        return
    log(f"{path} is missing: mining false positives with the final screening model")
    net = cfg.folder.load_network(cfg.fold, "screening", cfg.plans, info.device)
    threshold = D.broadcast_object(info, _mining_threshold(cfg))
    n = mine_into_bank(info, net, bank, cfg.plans, threshold, -1, precision=cfg.precision)
    if info.is_main:
        save_false_positives(path, bank, threshold)
    log(f"mined {n} false positives")


def _mining_threshold(cfg: TrainConfig) -> float:
    return float(cfg.plans.schedule("screening", cfg.device).mining_threshold)  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------------------------------------
# hard sampling
# ----------------------------------------------------------------------------------------------------------
#: Share of the draws spread evenly over all false positives under ``fp_sampling="hard"``, so that an FP the
#: network rejects today is still seen and not forgotten.
HARD_SAMPLING_FLOOR = 0.25


def hardness_weights(cmb_probability: np.ndarray, floor: float = HARD_SAMPLING_FLOOR) -> np.ndarray:
    """Sampling weights of false positives from the network's current CMB probability of each: a quarter of the
    draws uniform, the rest in proportion to the probability, so the mimics the network still takes for CMBs
    (the ones that cost precision on new sites) come up most often. Sums to 1."""
    p = np.clip(np.asarray(cmb_probability, dtype=np.float64), 0.0, 1.0)
    if p.size == 0:
        return p
    hard = p / p.sum() if p.sum() > 0 else np.full(p.size, 1.0 / p.size)
    w = floor / p.size + (1.0 - floor) * hard
    return w / w.sum()


@torch.inference_mode()
def false_positive_probabilities(network: nn.Module, stage: Stage, plans: Plans, bank: SampleBank,
                                 device: str | torch.device = "cpu", batch_size: int = 256) -> np.ndarray:
    """The classifier's current CMB probability of every active false positive, each seen once, centred and
    unaugmented (the input to ``hardness_weights``)."""
    rows = bank.active_false_positives
    size = stage.patch_size(plans)
    out = np.zeros(len(rows), dtype=np.float64)
    was_training = network.training
    network.eval()

    def probability(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return cmb_probability(as_class_logits(net(x)))

    for ci in np.unique(rows[:, 0]) if len(rows) else []:
        idx = np.flatnonzero(rows[:, 0] == ci)
        for start in range(0, len(idx), batch_size):
            part = idx[start : start + batch_size]
            blocks = extract_patches(np.asarray(bank.cases[ci].data), rows[part, 1:4], size)
            out[part] = batch_probability([network], blocks, ForwardOptions(device), probability=probability)
    network.train(was_training)
    return out


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


def update_fp_weights(state: TrainingState, epoch: int) -> None:
    """Under ``fp_sampling="hard"``, weight the FPs by the network's CMB probability at the start of ``epoch``
    (from these weights, not later ones, so a resumed run draws the same)."""
    if getattr(state.schedule, "fp_sampling", "uniform") == "hard" and epoch > 0:  # discrimination's schedule only
        probability = false_positive_probabilities(state.network, state.stage, state.cfg.plans, state.bank,
                                                   state.info.device)
        state.bank.fp_weights = hardness_weights(probability)


def mine_after_epoch(state: TrainingState, epoch: int) -> int:
    """The screening schedule's mining pass after ``epoch`` when it has one; returns how many FPs were new.

    None after the last epoch: :func:`final_mining` screens every case with the final weights then.
    """
    schedule, bank, done = state.schedule, state.bank, epoch + 1
    if not (state.stage.mines and isinstance(schedule, ScreeningSchedule)):
        return 0
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


def cases_still_to_screen(state: TrainingState, epoch: int) -> int:
    """Whole volumes the screening stage will still screen after ``epoch``: the intermediate mining passes left,
    the final pass over every training case, and the validation volumes (none more for fold ``all``, whose
    validation reuses the final pass)."""
    schedule, n = state.schedule, len(state.bank.cases)
    if not (state.stage.mines and isinstance(schedule, ScreeningSchedule)):
        return 0
    per_pass = min(n, int(schedule.mining_cases)) if schedule.mining_cases else n
    later = [e for e in sorted({int(e) for e in schedule.mining_epochs}) if epoch + 1 < e < state.epochs]
    return len(later) * per_pass + n + (len(state.val_bank.cases) if state.val_bank is not state.bank else 0)


def final_mining(state: TrainingState) -> None:
    """The last pass, over every training volume with the final screening weights."""
    schedule, bank = cast(ScreeningSchedule, state.schedule), state.bank
    threshold = float(schedule.mining_threshold)
    retired_before = int((bank.fp_dropped >= 0).sum())
    state.final_candidates.clear()
    n = mine_into_bank(state.info, state.network, bank, state.cfg.plans, threshold, state.epochs,
                       keep=schedule.mining_keep, candidates=state.final_candidates, precision=state.cfg.precision)
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
             and count_threshold >= float(cast(ScreeningSchedule, state.schedule).mining_threshold) else None)
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
