"""Losses named by the schedule: ``weighted_ce`` (screening, discrimination), ``dice`` and ``dice_ce``
(segmentation)."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from cmbunet.errors import CMBUNetError, InvalidValueError
from cmbunet.plans.schema import Schedule
from cmbunet.utilities.autocast import cmb_probability

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def as_class_logits(logits: torch.Tensor) -> torch.Tensor:
    """``(B, K)`` from classifier output; the screening FCN gives ``(B, K, 1, 1, 1)`` on one block."""
    if logits.ndim == 2:
        return logits
    if logits.shape[2:].numel() != 1:
        raise InvalidValueError(f"expected one output per block, got logits of shape {tuple(logits.shape)}")
    return logits.reshape(logits.shape[0], logits.shape[1])


def weighted_cross_entropy(class_weights: Sequence[float] | None) -> Loss:
    """Cross entropy with per-class weights (Chen & Dou: background 0.25, CMB 0.75) against ``(B,)`` labels."""
    weight = None if class_weights is None else torch.tensor([float(w) for w in class_weights])

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        w = None if weight is None else weight.to(logits.device)
        return F.cross_entropy(as_class_logits(logits).float(), target.long(), weight=w)

    return loss


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """``1 - Dice`` of the CMB channel computed over the whole batch ("batch Dice").

    Pooling the batch means patches without CMB (the false-positive samples) still count through their
    predicted volume, and a batch of tiny lesions does not give a Dice that jumps between 0 and 1.
    """
    prob = cmb_probability(logits)
    tgt = (target > 0).float()
    intersection = (prob * tgt).sum()
    return 1.0 - (2.0 * intersection + smooth) / (prob.sum() + tgt.sum() + smooth)


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Batch soft Dice plus voxel-wise cross-entropy (nnU-Net's default): CE gives every voxel a gradient from
    the first step, Dice keeps the tiny CMB class from being drowned by background."""
    return soft_dice_loss(logits, target) + F.cross_entropy(logits.float(), (target > 0).long())


def build_loss(schedule: Schedule) -> Loss:
    """The loss named by ``schedule.loss``."""
    name = schedule.loss
    if name == "weighted_ce":
        return weighted_cross_entropy(schedule.class_weights)
    if name == "ce":
        return weighted_cross_entropy(None)
    if name == "dice":
        return soft_dice_loss
    if name == "dice_ce":
        return dice_ce_loss
    raise CMBUNetError(f"unknown loss '{name}' in the training schedule; expected weighted_ce, ce, dice or dice_ce")
