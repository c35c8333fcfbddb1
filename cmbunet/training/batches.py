"""The batches of an epoch: patches cut, augmented and labelled in data-loading workers.

Every batch draws from a generator that depends only on its position (seed, rank, epoch, index), so resuming a
run and the number of workers change nothing.
"""

from __future__ import annotations

import numpy as np
import torch

from cmbunet.plans.schema import Augmentation, Plans
from cmbunet.training.augmentation import make_patches
from cmbunet.training.samples import SampleBank
from cmbunet.training.stages import Stage


def batch_rng(seed: int, rank: int, epoch: int, index: int) -> np.random.Generator:
    """An RNG for one batch that depends only on its position, so resume and worker count change nothing."""
    return np.random.default_rng([int(seed), int(rank), int(epoch), int(index), 1])


def epoch_rng(seed: int, rank: int, epoch: int) -> np.random.Generator:
    """The RNG that draws one epoch's samples on one rank."""
    return np.random.default_rng([int(seed), int(rank), int(epoch), 0])


class EpochBatches(torch.utils.data.Dataset):
    """Batch ``i`` of an epoch: patches cut, augmented and labelled for ``rows[i*B:(i+1)*B]``.

    Indexed by batch, not by sample, so a data-loading worker builds a whole batch with vectorised calls.
    """

    def __init__(self, stage: Stage, plans: Plans, bank: SampleBank, rows: np.ndarray, batch_size: int,
                 augmentation: Augmentation | None, seed: int, rank: int, epoch: int):
        self.stage, self.bank, self.rows, self.batch_size = stage, bank, rows, int(batch_size)
        self.size = stage.patch_size(plans)
        self.augmentation, self.seed, self.rank, self.epoch = augmentation, seed, rank, epoch

    def __len__(self) -> int:
        return -(-len(self.rows) // self.batch_size)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rows = self.rows[index * self.batch_size:(index + 1) * self.batch_size]
        rng = batch_rng(self.seed, self.rank, self.epoch, index)
        data, seg = make_patches(self.bank, rows, self.size, self.augmentation, rng)
        return {"data": torch.from_numpy(np.ascontiguousarray(data)),
                "target": torch.from_numpy(self.stage.targets(seg)),
                "kind": torch.from_numpy(rows[:, 4].copy())}
