"""``-device auto`` (the default): CUDA when a GPU is visible, else the CPU; and training says which of the
plans' schedules the device selects."""

from __future__ import annotations

import pytest
import torch

from cli_commands import build_parser
from cmbunet.errors import CMBUNetError
from cmbunet.training.cli import main as train_main, schedule_line
from cmbunet.utilities.cli import resolve_device_choice
from plan_helpers import make_plans


@pytest.mark.parametrize("command", ["cmbunet_train", "cmbunet_predict", "cmbunet_evaluate_cv", "cmbunet_demo"])
def test_device_defaults_to_auto(command):
    parser = build_parser(command)
    action = next(a for a in parser._actions if "--device" in a.option_strings)
    assert action.default == "auto" and list(action.choices) == ["auto", "cpu", "cuda"]


def test_auto_picks_cuda_only_when_a_gpu_is_visible(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device_choice("auto") == ("cpu", "auto: no CUDA GPU is visible")
    assert resolve_device_choice("cpu") == ("cpu", "-device cpu")
    with pytest.raises(CMBUNetError, match="no CUDA GPU is available; use -device cpu or auto"):
        resolve_device_choice("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device_choice("auto") == ("cuda", "auto: a CUDA GPU is visible")


def test_train_refuses_cuda_without_a_gpu_before_anything_runs(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train_main(["1", "0", "-device", "cuda", "--preprocessed-root", str(tmp_path)]) == 2
    assert "-device cuda was requested but no CUDA GPU is available" in capsys.readouterr().err


def test_schedule_line_names_the_schedule_and_how_the_other_differs():
    plans = make_plans(preset="auto")
    gpu = schedule_line(plans, "cuda", ["screening", "segmentation"])
    g, c = plans.training.gpu.screening, plans.training.cpu.screening
    assert gpu.startswith("training schedule: training.gpu of the plans (the device is cuda); it differs from "
                          f"training.cpu: screening {g.epochs} x {g.samples_per_epoch} samples (training.cpu: "
                          f"{c.epochs} x {c.samples_per_epoch})")
    assert gpu.endswith("-device cpu trains with training.cpu")
    assert schedule_line(plans, "cpu", ["discrimination"]).startswith(
        "training schedule: training.cpu of the plans (the device is cpu); it differs from training.gpu")
    same = make_plans()  # the tiny preset trains alike on both
    assert schedule_line(same, "cpu", ["screening"]).endswith("; training.gpu is the same")
