"""Build any of the three stage networks from the plans alone, so checkpoints + plans fully define a model."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from torch import nn

from cmbunet.errors import InvalidValueError
from cmbunet.networks.discrimination import DiscriminationCNN
from cmbunet.networks.screening import ScreeningFCN
from cmbunet.networks.unet import SegmentationUNet
from cmbunet.plans.schema import STAGES, Plans

#: Each stage's network class: its constructor takes the fields of ``plans.<stage>.network`` by name.
NETWORK_CLASSES: dict[str, type[nn.Module]] = {
    "screening": ScreeningFCN,
    "discrimination": DiscriminationCNN,
    "segmentation": SegmentationUNet,
}


def network_arguments(stage: str, plans: Plans) -> dict[str, Any]:
    """The constructor arguments of the ``stage`` network: every field of ``plans.<stage>.network``, and for the
    discrimination CNN its block size too (the input size of its fully connected layers)."""
    config = plans.stage(stage)
    arguments = {f.name: getattr(config.network, f.name) for f in fields(config.network)}
    if stage == "discrimination":
        arguments["block_size"] = config.block_size
    return arguments


def build_network(stage: str, plans: Plans) -> nn.Module:
    """Instantiate the ``stage`` network described by ``plans.<stage>.network``."""
    if stage not in STAGES:
        raise InvalidValueError(f"unknown stage '{stage}'; expected one of {STAGES}")
    return NETWORK_CLASSES[stage](**network_arguments(stage, plans))
