"""How the discrimination stage draws its false positives (the schedule's ``fp_sampling``).

- ``uniform``: evenly over every mined FP.
- ``candidates``: most draws among the FPs that the final screening model scores at or above the inference
  screening threshold, the candidates discrimination meets when it predicts. Mining keeps every FP above the
  lower mining threshold (0.1), and on the wide synthetic world only about 7% of them reach 0.5; drawn evenly,
  the dark round mimics that do reach it (calcifications, veins cut across) are a few draws in a thousand.
  Measured on held-out groups with two training seeds it removed false positives but lost microbleeds, and
  most calcifications in CSF stayed (documentation/experiments.md), so it is not the default.
- ``hard``: in proportion to the network's current CMB probability of each, above a uniform floor.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cmbunet.plans.schema import Plans
from cmbunet.training.losses import as_class_logits
from cmbunet.training.samples import SampleBank
from cmbunet.training.stages import Stage
from cmbunet.training.state import TrainingState
from cmbunet.utilities.autocast import ForwardOptions, batch_probability, cmb_probability
from cmbunet.utilities.patches import extract_patches


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


#: Share of the draws under ``fp_sampling="candidates"`` that go to the FPs the final screening model keeps as
#: candidates; the rest are spread evenly over all, so that discrimination still sees the easier ones.
CANDIDATE_SHARE = 0.75


def candidate_weights(final_scores: np.ndarray, threshold: float, share: float = CANDIDATE_SHARE) -> np.ndarray | None:
    """Sampling weights of false positives from their final screening scores: ``share`` of the draws evenly over
    those at or above ``threshold`` (the inference screening threshold), the rest evenly over all. None (draw
    evenly) when no score is known or every FP, or none, reaches the threshold. Sums to 1."""
    s = np.nan_to_num(np.asarray(final_scores, dtype=np.float64), nan=-np.inf)
    candidate = s >= float(threshold)
    if s.size == 0 or not candidate.any() or candidate.all():
        return None
    w = (1.0 - share) / s.size + share * candidate / candidate.sum()
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


def update_fp_weights(state: TrainingState, epoch: int) -> None:
    """The FP weights of the stage's ``fp_sampling`` at the start of ``epoch``: under ``"hard"`` from the network's
    CMB probabilities then (from these weights, not later ones, so a resumed run draws the same); under
    ``"candidates"`` from the final screening scores, once."""
    if state.fp_sampling == "hard" and epoch > 0:
        probability = false_positive_probabilities(state.network, state.stage, state.cfg.plans, state.bank,
                                                   state.info.device)
        state.bank.fp_weights = hardness_weights(probability)
    elif state.fp_sampling == "candidates" and state.bank.fp_weights is None:
        bank = state.bank
        active = bank.fp_dropped < 0 if len(bank.fp_dropped) == len(bank.false_positives) else slice(None)
        threshold = float(state.cfg.plans.inference.screening_threshold)
        bank.fp_weights = candidate_weights(bank.fp_final_scores[active], threshold)
        if epoch == state.start_epoch:
            n = int(np.sum(np.nan_to_num(bank.fp_final_scores[active], nan=-np.inf) >= threshold))
            state.log(f"false positives: {CANDIDATE_SHARE:.0%} of the draws among the {n} of "
                      f"{len(bank.active_false_positives)} that the final screening model scores >= {threshold:g} "
                      "(the candidates of inference)" if bank.fp_weights is not None else
                      "false positives drawn evenly: no final screening scores separate the candidates of inference")
