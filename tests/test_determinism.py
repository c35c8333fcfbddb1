"""Determinism: same data and seed give the same plans.json (byte for byte), the same preprocessed arrays (also
with another number of worker processes), the same training samples and, on CPU, the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cmbunet.plan_and_preprocess import main as plan_main
from cmbunet.plans.plans_io import load_plans
from cmbunet.synthetic.writer import write_dataset
from cmbunet.training.cli import main as train_main
from cmbunet.training.samples import build_bank, draw_epoch_samples
from cmbunet.training.batches import EpochBatches, epoch_rng
from cmbunet.training.stages import STAGE_TABLE

DATASET = "Dataset804_Determinism"
OVERRIDES = [
    "training.cpu.screening.epochs=2", "training.cpu.screening.samples_per_epoch=32",
    "training.cpu.screening.batch_size=16", "training.cpu.screening.val_samples=16",
    "training.cpu.screening.mining_epochs=[1]",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One raw dataset planned and preprocessed twice: in one process, and with two worker processes."""
    base = tmp_path_factory.mktemp("determinism")
    raw = base / "raw"
    write_dataset(raw / DATASET, 5, seed=11, size="small")
    for name, workers in (("a", "1"), ("b", "2")):
        assert plan_main(["-d", DATASET, "--preset", "tiny", "--raw-root", str(raw), "--preprocessed-root",
                          str(base / f"pre_{name}"), "-np", workers, "--override", *OVERRIDES]) == 0
    return {"base": base, "a": base / "pre_a" / DATASET, "b": base / "pre_b" / DATASET}


def test_same_plans_fingerprint_and_splits(runs):
    for name in ("plans.json", "dataset_fingerprint.json", "splits_final.json", "dataset.json"):
        assert (runs["a"] / name).read_bytes() == (runs["b"] / name).read_bytes(), name


def test_same_preprocessed_arrays(runs):
    cases = sorted(p.stem for p in (runs["a"] / "data").glob("*.npz"))
    assert cases == sorted(p.stem for p in (runs["b"] / "data").glob("*.npz")) and len(cases) == 5
    for case in cases:
        with np.load(runs["a"] / "data" / f"{case}.npz") as a, np.load(runs["b"] / "data" / f"{case}.npz") as b:
            assert sorted(a.files) == sorted(b.files)
            for key in a.files:
                assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), f"{case}/{key}"
        pa = json.loads((runs["a"] / "data" / f"{case}.json").read_text())
        pb = json.loads((runs["b"] / "data" / f"{case}.json").read_text())
        assert pa == pb, case


def test_same_training_samples(runs):
    plans = load_plans(runs["a"] / "plans.json")
    splits = json.loads((runs["a"] / "splits_final.json").read_text())
    stage = STAGE_TABLE["screening"]
    proportions = plans.training.cpu.screening.proportions
    batches = []
    for name in ("a", "b", "a"):
        bank = build_bank(runs[name], splits[0]["train"])
        rows = draw_epoch_samples(bank, 32, proportions, epoch_rng(7, 0, 1))
        ds = EpochBatches(stage, plans, bank, rows, 16, plans.augmentation, seed=7, rank=0, epoch=1)
        batches.append((rows, [ds[i] for i in range(len(ds))]))
    (rows0, b0), others = batches[0], batches[1:]
    for rows, b in others:
        assert np.array_equal(rows0, rows)
        for x, y in zip(b0, b):
            for key in ("data", "target", "kind"):
                assert torch.equal(x[key], y[key]), key
    # another seed draws other samples (the test would be vacuous otherwise)
    bank = build_bank(runs["a"], splits[0]["train"])
    assert not np.array_equal(rows0, draw_epoch_samples(bank, 32, proportions, epoch_rng(8, 0, 1)))


def test_same_weights_after_training_twice_with_a_seed(runs):
    finals = []
    for name in ("a", "b"):
        results = runs["base"] / f"results_{name}"
        assert train_main([DATASET, "0", "-s", "screening", "--seed", "21", "-npp", "0",
                           "--preprocessed-root", str(runs[name].parent), "--results-root", str(results)]) == 0
        finals.append(torch.load(results / DATASET / "cmbunet" / "fold_0" / "screening" / "checkpoint_final.pth",
                                 weights_only=True))
    a, b = finals
    assert a["epoch"] == b["epoch"] == 1
    assert a["weights"].keys() == b["weights"].keys()
    for key in a["weights"]:
        assert torch.equal(a["weights"][key], b["weights"][key]), key
    assert a["history"]["train_loss"] == b["history"]["train_loss"]
