"""The three networks of cmbunet, each built from the plans alone (see :func:`build_network`)."""

from cmbunet.networks.build import build_network
from cmbunet.networks.discrimination import DiscriminationCNN
from cmbunet.networks.screening import ScreeningFCN
from cmbunet.networks.unet import SegmentationUNet

__all__ = ["build_network", "ScreeningFCN", "DiscriminationCNN", "SegmentationUNet"]
