"""Discrimination CNN (002 Table 2): the screening trunk on a larger block, then two fully connected layers."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from cmbunet.networks.blocks import init_weights, valid_trunk


class DiscriminationCNN(nn.Module):
    """C1(BN) C2(BN) M1 C3(BN) C4(BN) -> FC(512, dropout) -> FC(2).

    The flattened size follows from ``block_size`` (002: 24x24x20 gives 128x4x4x4).
    """

    def __init__(
        self,
        block_size: Sequence[int],
        in_channels: int = 1,
        features: Sequence[int] = (64, 64, 128, 128),
        first_kernels: Sequence[int] = (5, 5, 3),
        fc_features: int = 512,
        dropout: float = 0.5,
        num_classes: int = 2,
        negative_slope: float = 0.01,
    ):
        super().__init__()
        f4 = features[3]
        self.features = valid_trunk(in_channels, features, first_kernels, negative_slope)
        trunk = [((b - 2 * (k - 1)) // 2) - 4 for b, k in zip(block_size, first_kernels)]
        if min(trunk) < 1:
            raise ValueError(f"discrimination block {tuple(block_size)} is too small for kernels {tuple(first_kernels)}")
        self.trunk_size = tuple(trunk)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(f4 * trunk[0] * trunk[1] * trunk[2], fc_features),
            nn.LeakyReLU(negative_slope, inplace=True),
            nn.Dropout(dropout),
            nn.Linear(fc_features, num_classes),
        )
        init_weights(self, negative_slope)

    #: C1 and C2 (stride-1 valid convolutions before the first pooling) commute with shifts of the block, so one
    #: pass over a block grown by ``2 s`` serves every block shifted by up to ``s`` voxels; they hold about 90%
    #: of the network's FLOPs.
    num_shared_layers = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def shift_invariant_features(self, x: torch.Tensor) -> torch.Tensor:
        """C1 and C2 on ``x``: the part of the network that is computed once for all shifted blocks."""
        return self.features[: self.num_shared_layers](x)

    def forward_from_shared(self, y: torch.Tensor) -> torch.Tensor:
        """The rest of the network on a window of :meth:`shift_invariant_features` (same as ``forward``)."""
        return self.classifier(self.features[self.num_shared_layers :](y))
