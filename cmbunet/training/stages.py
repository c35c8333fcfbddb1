"""What differs between the three stages: patch size, sample kinds, targets, the metric of the best checkpoint.

Everything else (optimiser, schedule, checkpoints, logging, resume, DDP) is the one loop in ``loop.py``; mining
the screening false positives is ``mining.py``.

| stage | patch | samples | target | best checkpoint by |
|---|---|---|---|---|
| screening | ``screening.block_size`` | positives, random negatives, mined FPs | central 2x2x2 rule | F2 (sensitivity first) |
| discrimination | ``discrimination.block_size`` | positives, screening FPs | central 2x2x2 rule | F1 |
| segmentation | ``segmentation.patch_size`` | positives, screening FPs | the label patch | Dice |
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cmbunet.plans.schema import Plans
from cmbunet.utilities.patches import central_label


@dataclass(frozen=True)
class Stage:
    """Static description of one stage."""

    name: str
    classifier: bool  # one label per patch (True) or one per voxel (False)
    monitor: str  # validation metric selecting checkpoint_best (higher is better)
    requires: tuple[str, ...]  # stages whose final checkpoint must exist first
    mines: bool  # whether this stage mines its own false positives while training

    def patch_size(self, plans: Plans) -> tuple[int, int, int]:
        return tuple(int(s) for s in plans.stage(self.name).input_size)  # type: ignore[return-value]

    def targets(self, seg_patches: np.ndarray) -> np.ndarray:
        """Class per patch (central rule) for classifiers, the label patch for segmentation."""
        if self.classifier:
            return central_label(seg_patches).astype(np.int64)
        return (seg_patches > 0).astype(np.int64)


#: The stages by name, in training order.
STAGE_TABLE = {
    "screening": Stage("screening", True, "f2", (), True),
    "discrimination": Stage("discrimination", True, "f1", ("screening",), False),
    "segmentation": Stage("segmentation", False, "dice", ("screening",), False),
}
