"""Building blocks shared by the three networks."""

from __future__ import annotations

from typing import Sequence

from torch import nn


def conv_bn_act(
    in_channels: int,
    out_channels: int,
    kernel: Sequence[int] | int,
    negative_slope: float = 0.01,
    stride: Sequence[int] | int = 1,
    padding: Sequence[int] | int = 0,
) -> nn.Sequential:
    """Conv3d -> BatchNorm3d -> LeakyReLU, the C(BN) unit of Chen & Dou's tables (valid convolution by default)."""
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.LeakyReLU(negative_slope, inplace=True),
    )


def init_weights(module: nn.Module, negative_slope: float = 0.01) -> None:
    """He initialisation matched to the LeakyReLU slope, as nnU-Net does; biases start at zero."""
    for m in module.modules():
        if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, a=negative_slope)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def valid_trunk(
    in_channels: int, features: Sequence[int], first_kernels: Sequence[int], negative_slope: float = 0.01
) -> nn.Sequential:
    """C1(BN) C2(BN) M1 C3(BN) C4(BN): the valid-convolution trunk shared by Chen & Dou's Tables 1 and 2."""
    f1, f2, f3, f4 = features[:4]
    return nn.Sequential(
        conv_bn_act(in_channels, f1, tuple(first_kernels), negative_slope),
        conv_bn_act(f1, f2, tuple(first_kernels), negative_slope),
        nn.MaxPool3d(2, 2),
        conv_bn_act(f2, f3, 3, negative_slope),
        conv_bn_act(f3, f4, 3, negative_slope),
    )
