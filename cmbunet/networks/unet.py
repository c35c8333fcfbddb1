"""Segmentation U-Net (Chen & Dou, VALDO 2021): two conv-BN-LeakyReLU per stage, strided-conv down, transposed-conv up,
skip concatenation; features start at 32 and double per stage."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from cmbunet.errors import InvalidValueError
from cmbunet.networks.blocks import conv_bn_act, init_weights


def init_rare_foreground(output: nn.Conv3d, prior: float) -> None:
    """Start the output layer at "background everywhere, CMB with probability ``prior``".

    CMBs fill well under 1% of a patch; from a default initialisation the network first predicts CMB in about
    half of the voxels and spends its first hundreds of steps unlearning that (the prior-probability
    initialisation of the focal-loss paper). Small weights keep the start close to the prior.
    """
    nn.init.normal_(output.weight, std=1e-3)
    nn.init.zeros_(output.bias)
    with torch.no_grad():
        output.bias[1:] = float(np.log(prior / (1.0 - prior)))


class SegmentationUNet(nn.Module):
    """Input sizes must be divisible by ``2 ** (len(features) - 1)`` (Chen & Dou: 32x32x24 with 4 stages)."""

    def __init__(
        self,
        in_channels: int = 1,
        features: Sequence[int] = (32, 64, 128, 256),
        num_classes: int = 2,
        negative_slope: float = 0.01,
        foreground_prior: float = 0.01,
    ):
        super().__init__()
        self.num_pool = len(features) - 1
        self.encoder = nn.ModuleList()
        prev = in_channels
        for s, f in enumerate(features):
            stride = 1 if s == 0 else 2
            self.encoder.append(
                nn.Sequential(
                    conv_bn_act(prev, f, 3, negative_slope, stride=stride, padding=1),
                    conv_bn_act(f, f, 3, negative_slope, padding=1),
                )
            )
            prev = f
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for s in range(len(features) - 2, -1, -1):
            self.upsample.append(nn.ConvTranspose3d(features[s + 1], features[s], 2, stride=2, bias=False))
            self.decoder.append(
                nn.Sequential(
                    conv_bn_act(2 * features[s], features[s], 3, negative_slope, padding=1),
                    conv_bn_act(features[s], features[s], 3, negative_slope, padding=1),
                )
            )
        self.output = nn.Conv3d(features[0], num_classes, 1)
        init_weights(self, negative_slope)
        init_rare_foreground(self.output, foreground_prior)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        divisor = 2**self.num_pool
        if any(s % divisor for s in x.shape[2:]):
            raise InvalidValueError(f"U-Net input size {tuple(x.shape[2:])} must be divisible by {divisor}")
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        for up, dec in zip(self.upsample, self.decoder):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))
        return self.output(x)
