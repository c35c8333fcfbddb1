"""Interruption: ``cmbunet_train`` and ``cmbunet_predict`` killed with SIGKILL mid-run lose nothing.

A resumed training run (``--c``) finishes every stage; a re-run of a killed prediction completes only the
missing cases and leaves the finished ones untouched; the raw data and the prediction input are never written.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from cmbunet.inference.cli import main as predict_main
from cmbunet.plan_and_preprocess import main as plan_main
from cmbunet.plans import STAGES
from cmbunet.synthetic.writer import write_dataset
from cmbunet.training.cli import main as train_main
from tiny_schedule import TINY_TRAINING_OVERRIDES

DATASET = "Dataset803_Interrupt"
BIN = Path(sys.executable).parent
OVERRIDES = TINY_TRAINING_OVERRIDES
PREDICT_OPTIONS = ["--max-candidates", "8", "-npp", "0"]


def tree_hash(*folders: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 300.0, poll: float = 0.02) -> None:
    """Poll until ``predicate()``; fail early if the process ends first."""
    end = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"process ended (code {proc.returncode}) before the awaited moment:\n{out}\n{err}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail("timed out waiting")
        time.sleep(poll)


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("interruption")
    raw, pre = base / "raw", base / "pre"
    write_dataset(raw / DATASET, 5, seed=11, size="small", num_test_cases=4)
    assert plan_main(["-d", DATASET, "--preset", "tiny", "--raw-root", str(raw), "--preprocessed-root", str(pre),
                      "-np", "1", "--override", *OVERRIDES]) == 0
    return {"base": base, "raw": raw, "pre": pre, "res": base / "res", "ds": raw / DATASET}


@pytest.fixture(scope="module")
def killed_and_resumed_training(roots) -> dict:
    """``cmbunet_train`` killed right after its first checkpoint_latest.pth, then continued with ``--c``."""
    res, pre = roots["res"], roots["pre"]
    before = tree_hash(roots["raw"], pre)
    args = [DATASET, "0", "--seed", "3", "-npp", "0", "--preprocessed-root", str(pre), "--results-root", str(res)]
    fold = res / DATASET / "cmbunet" / "fold_0"
    latest = fold / "screening" / "checkpoint_latest.pth"
    proc = subprocess.Popen([str(BIN / "cmbunet_train"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_for(latest.is_file, proc)
    kill(proc)
    after_kill = {"latest": torch.load(latest, weights_only=True),  # complete: saved atomically
                  "files": sorted(p.relative_to(fold).as_posix() for p in fold.rglob("*") if p.is_file()),
                  "tree": tree_hash(roots["raw"], pre)}
    code = train_main([*args, "--c"])
    return {"before": before, "after_kill": after_kill, "code": code, "fold": fold,
            "after_resume": tree_hash(roots["raw"], pre)}


def test_killed_training_resumes_and_finishes(roots, killed_and_resumed_training):
    run = killed_and_resumed_training
    fold, after_kill = run["fold"], run["after_kill"]
    assert after_kill["latest"]["epoch"] == 0
    if after_kill["latest"]["best_metric"] is not None:  # a latest that names a best comes after that best
        assert "screening/checkpoint_best.pth" in after_kill["files"]
    assert "screening/checkpoint_final.pth" not in after_kill["files"]
    assert not any(f.startswith(("discrimination/", "segmentation/")) for f in after_kill["files"])
    assert run["code"] == 0
    for stage in STAGES:
        final = torch.load(fold / stage / "checkpoint_final.pth", weights_only=True)
        epochs = int(next(o for o in OVERRIDES if o.startswith(f"training.cpu.{stage}.epochs=")).split("=")[1])
        assert final["stage"] == stage and final["epoch"] == epochs - 1
        assert len(final["history"]["train_loss"]) == epochs
        assert (fold / stage / "checkpoint_best.pth").is_file()
    assert "resuming after epoch 1" in (fold / "screening" / "training_log.txt").read_text()
    # neither the raw data nor the preprocessed data were written to, by the killed run or by the resumed one
    assert after_kill["tree"] == run["before"] and run["after_resume"] == run["before"]


def test_killed_prediction_reruns_only_missing_cases(roots, killed_and_resumed_training, tmp_path):
    assert killed_and_resumed_training["code"] == 0
    inp = roots["ds"] / "imagesTs"
    out = tmp_path / "pred"
    cases = sorted(p.name[: -len("_0000.nii.gz")] for p in inp.glob("*_0000.nii.gz"))
    assert len(cases) == 4
    before = tree_hash(roots["raw"])
    args = ["-i", str(inp), "-o", str(out), "-d", DATASET, "--results-root", str(roots["res"]), *PREDICT_OPTIONS]

    def finished() -> list[str]:
        return [c for c in cases if (out / f"{c}.nii.gz").is_file()]

    proc = subprocess.Popen([str(BIN / "cmbunet_predict"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_for(lambda: bool(finished()), proc)
    kill(proc)
    done = finished()
    assert 1 <= len(done) < len(cases), done
    assert tree_hash(roots["raw"]) == before
    # what the killed run left is complete: every visible image reads, every finished case has its table
    for f in out.glob("*.nii.gz"):
        sitk.ReadImage(str(f))
    stats = {}
    for c in done:
        assert (out / f"{c}_cmbs.csv").is_file()
        st = (out / f"{c}.nii.gz").stat()
        stats[c] = (st.st_ino, st.st_mtime_ns)

    assert predict_main(args) == 0
    assert tree_hash(roots["raw"]) == before
    assert finished() == cases
    for c in done:
        st = (out / f"{c}.nii.gz").stat()
        assert (st.st_ino, st.st_mtime_ns) == stats[c], f"{c} was predicted again"
    summary = pd.read_csv(out / "summary.csv").set_index("case")
    assert summary.index.tolist() == cases
    for c in cases:
        assert summary.loc[c, "status"] == ("skipped (done before)" if c in done else "ok")
