"""Hard false-positive sampling (the discrimination schedule's ``fp_sampling="hard"``): false positives drawn in
proportion to the network's current CMB probability of each, above a uniform floor."""

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
    """Under ``fp_sampling="hard"``, weight the FPs by the network's CMB probability at the start of ``epoch``
    (from these weights, not later ones, so a resumed run draws the same)."""
    if state.hard_fp_sampling and epoch > 0:
        probability = false_positive_probabilities(state.network, state.stage, state.cfg.plans, state.bank,
                                                   state.info.device)
        state.bank.fp_weights = hardness_weights(probability)
