"""Test-suite settings shared by every test file."""

import os

import torch

# Under pytest-xdist each worker gets one thread, so two workers on two cores do not oversubscribe the CPU.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")
