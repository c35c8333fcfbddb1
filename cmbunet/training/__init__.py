"""Three-stage training (screening FCN, discrimination CNN, segmentation U-Net) with one shared loop."""

from cmbunet.training.checkpoint import load_checkpoint, load_stage_network

__all__ = ["load_checkpoint", "load_stage_network"]
