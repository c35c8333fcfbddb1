"""How a batch reaches the device and in which precision the networks of prediction run on it."""

from __future__ import annotations

import contextlib

import numpy as np
import torch


def autocast_context(device: torch.device | str, precision: str | bool = False) -> contextlib.AbstractContextManager:
    """Autocast for a resolved ``precision`` (``fp32``, ``bf16``, ``fp16``; see ``cpu_features.resolve_precision``).

    A bool is the older ``cpu_bf16`` flag: fp16 autocast on CUDA whatever its value, bf16 on the CPU when True.
    """
    device = torch.device(device)
    if isinstance(precision, bool):
        precision = "fp16" if device.type == "cuda" else ("bf16" if precision else "fp32")
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision in ("bf16", "fp16"):
        return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    raise ValueError(f"unknown precision '{precision}'; expected fp32, bf16 or fp16 (resolve 'auto' first)")


def to_device(array: np.ndarray, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """A ``(B, C, X, Y, Z)`` array as a tensor on ``device``, in channels-last layout when the network runs so."""
    x = torch.from_numpy(array).to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last_3d) if channels_last else x
