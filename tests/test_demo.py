"""The README's main job, end to end: ``cmbunet_demo`` on a tiny budget (every step is a real command)."""

from __future__ import annotations

import json

from cmbunet.demo import main as demo_main


def test_demo_runs_every_step_and_reports_metrics(tmp_path, capsys):
    out = tmp_path / "demo"
    assert demo_main(["-o", str(out), "--cases", "6", "--test-cases", "2", "--preset", "tiny", "--no-report"]) == 0
    printed = capsys.readouterr().out
    for step in ("1/7", "2/7", "3/7", "4/7", "5/7", "6/7"):
        assert step in printed
    summary = json.loads((out / "predictions" / "evaluation" / "summary.json").read_text())
    assert summary["aggregate"]["num_cases"] == 2 and summary["aggregate"]["num_missing_predictions"] == 0
    predictions = sorted(p.name for p in (out / "predictions").glob("sub-*_space-T2S_prediction.nii.gz"))
    assert len(predictions) == 2
    model = out / "results" / "Dataset990_SyntheticDemo" / "cmbunet" / "fold_all"
    assert all((model / s / "checkpoint_final.pth").is_file() for s in ("screening", "discrimination", "segmentation"))
    assert "test-set metrics" in printed and str(out / "predictions") in printed
    # a second run reuses everything that is finished
    assert demo_main(["-o", str(out), "--cases", "6", "--test-cases", "2", "--preset", "tiny", "--no-report"]) == 0
    assert "already trained" in capsys.readouterr().out
