"""Screening FCN (Chen & Dou, VALDO 2021, Table 1): a small valid-convolution CNN that maps its block to 1x1x1
and therefore runs fully convolutionally over a whole volume, producing one score per block position with
stride 2."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from cmbunet.networks.blocks import init_weights, valid_trunk


class ScreeningFCN(nn.Module):
    """C1(BN) C2(BN) M1 C3(BN) C4(BN) C5 C6, all valid convolutions.

    With Chen & Dou's block 20x20x16: first kernels 5x5x3, last kernel 2x2x2 and features 64-64-128-128-256 give
    exactly Table 1. Output voxel ``j`` of a whole-volume pass sees input ``[2j, 2j + B)`` per axis.
    """

    def __init__(
        self,
        in_channels: int = 1,
        features: Sequence[int] = (64, 64, 128, 128, 256),
        first_kernels: Sequence[int] = (5, 5, 3),
        last_kernel: Sequence[int] = (2, 2, 2),
        num_classes: int = 2,
        negative_slope: float = 0.01,
    ):
        super().__init__()
        f4, f5 = features[3], features[4]
        self.features = valid_trunk(in_channels, features, first_kernels, negative_slope)
        # C5 and C6 carry no batch norm; LeakyReLU only between them (Chen & Dou's Table 1).
        self.head = nn.Sequential(
            nn.Conv3d(f4, f5, tuple(last_kernel)),
            nn.LeakyReLU(negative_slope, inplace=True),
            nn.Conv3d(f5, num_classes, 1),
        )
        init_weights(self, negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def screening_output_size(input_size: Sequence[int], first_kernels: Sequence[int], last_kernel: Sequence[int]) -> list[int]:
    """Output size of the FCN for an input size, layer by layer (used to check topologies and tiles)."""
    out = []
    for n, k1, k5 in zip(input_size, first_kernels, last_kernel):
        n = n - 2 * (k1 - 1)
        n = n // 2
        n = n - 4 - (k5 - 1)
        out.append(n)
    return out
