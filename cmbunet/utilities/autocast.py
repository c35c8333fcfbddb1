"""How a batch reaches the device, in which precision the networks of prediction run on it, and how their
logits become the CMB probability: :func:`batch_probability` is the one forward pass of prediction, and
:class:`ForwardOptions` says how one stage runs it."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from cmbunet.errors import InvalidValueError


@dataclass(frozen=True)
class ForwardOptions:
    """How the networks of one stage run: on ``device``, in ``precision`` (resolved: ``fp32``, ``bf16`` or
    ``fp16``; see ``cpu_features.resolve_precision``), in channels-last layout or not, and ``batch_size`` blocks or
    patches per forward pass where the stage batches them. ``InferenceOptions.forward(stage)`` gives the
    predictor's; the defaults are float32 on the CPU."""

    device: torch.device = torch.device("cpu")
    precision: str = "fp32"
    channels_last: bool = False
    batch_size: int = 256

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", torch.device(self.device))  # "cpu" or "cuda" given as a string


def autocast_context(device: torch.device | str, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """Autocast for a resolved ``precision`` (``fp32``, ``bf16``, ``fp16``; see ``cpu_features.resolve_precision``).
    Anything else, ``auto`` or a bool included, is refused: the caller resolves it first, so one place decides."""
    device = torch.device(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision in ("bf16", "fp16"):
        return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    raise InvalidValueError(f"unknown precision '{precision}'; expected fp32, bf16 or fp16 (resolve 'auto' first)")


def to_device(array: np.ndarray, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """A ``(B, C, X, Y, Z)`` array as a tensor on ``device``, in channels-last layout when the network runs so."""
    x = torch.from_numpy(array).to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last_3d) if channels_last else x


def cmb_probability(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """The CMB probability of two-class ``logits``: softmax over the class axis ``dim``, in float32, channel 1."""
    return torch.softmax(logits.float(), dim=dim).select(dim, 1)


def batch_probability(networks: Sequence[nn.Module], array: np.ndarray, forward: ForwardOptions,
                      probability: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
    """The forward pass of prediction: the ``(B, C, X, Y, Z)`` ``array`` as a tensor on ``forward.device``
    (channels-last when the networks run so), each network under the autocast of ``forward.precision``, its CMB
    probability (:func:`cmb_probability` of its logits, or ``probability(network, batch)``) averaged over
    ``networks``, back on the CPU as a numpy array. ``forward.batch_size`` is the caller's to apply."""
    x = to_device(np.ascontiguousarray(array), forward.device, forward.channels_last)
    with autocast_context(forward.device, forward.precision):
        total = None
        for net in networks:
            p = cmb_probability(net(x)) if probability is None else probability(net, x)
            total = p if total is None else total + p
        return (total / len(networks)).cpu().numpy()
