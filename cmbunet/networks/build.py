"""Build any of the three stage networks from the plans alone, so checkpoints + plans fully define a model."""

from __future__ import annotations

from torch import nn

from cmbunet.networks.discrimination import DiscriminationCNN
from cmbunet.networks.screening import ScreeningFCN
from cmbunet.networks.unet import SegmentationUNet

STAGES = ("screening", "discrimination", "segmentation")


def build_network(stage: str, plans: dict) -> nn.Module:
    """Instantiate the ``stage`` network described by ``plans[stage]["network"]``."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage '{stage}'; expected one of {STAGES}")
    cfg = dict(plans[stage]["network"])
    cfg.setdefault("in_channels", int(plans.get("num_input_channels", 1)))
    if stage == "screening":
        return ScreeningFCN(
            in_channels=cfg["in_channels"],
            features=cfg["features"],
            first_kernels=cfg["first_kernels"],
            last_kernel=cfg["last_kernel"],
            num_classes=cfg.get("num_classes", 2),
            negative_slope=cfg.get("negative_slope", 0.01),
        )
    if stage == "discrimination":
        return DiscriminationCNN(
            block_size=plans["discrimination"]["block_size"],
            in_channels=cfg["in_channels"],
            features=cfg["features"],
            first_kernels=cfg["first_kernels"],
            fc_features=cfg.get("fc_features", 512),
            dropout=cfg.get("dropout", 0.5),
            num_classes=cfg.get("num_classes", 2),
            negative_slope=cfg.get("negative_slope", 0.01),
        )
    return SegmentationUNet(
        in_channels=cfg["in_channels"],
        features=cfg["features"],
        num_classes=cfg.get("num_classes", 2),
        negative_slope=cfg.get("negative_slope", 0.01),
        foreground_prior=cfg.get("foreground_prior", 0.01),
    )
