"""Build any of the three stage networks from the plans alone, so checkpoints + plans fully define a model."""

from __future__ import annotations

from torch import nn

from cmbunet.networks.discrimination import DiscriminationCNN
from cmbunet.networks.screening import ScreeningFCN
from cmbunet.networks.unet import SegmentationUNet
from cmbunet.plans.schema import STAGES, Plans


def build_network(stage: str, plans: Plans) -> nn.Module:
    """Instantiate the ``stage`` network described by ``plans.<stage>.network``."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage '{stage}'; expected one of {STAGES}")
    if stage == "screening":
        scr = plans.screening.network
        return ScreeningFCN(
            in_channels=scr.in_channels,
            features=scr.features,
            first_kernels=scr.first_kernels,
            last_kernel=scr.last_kernel,
            num_classes=scr.num_classes,
            negative_slope=scr.negative_slope,
        )
    if stage == "discrimination":
        disc = plans.discrimination.network
        return DiscriminationCNN(
            block_size=plans.discrimination.block_size,
            in_channels=disc.in_channels,
            features=disc.features,
            first_kernels=disc.first_kernels,
            fc_features=disc.fc_features,
            dropout=disc.dropout,
            num_classes=disc.num_classes,
            negative_slope=disc.negative_slope,
        )
    seg = plans.segmentation.network
    return SegmentationUNet(
        in_channels=seg.in_channels,
        features=seg.features,
        num_classes=seg.num_classes,
        negative_slope=seg.negative_slope,
        foreground_prior=seg.foreground_prior,
    )
