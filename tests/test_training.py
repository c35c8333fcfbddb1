"""Training: samples, labels, proportions, augmentation, schedule, checkpoints, resume, DDP and the CLI.

Everything runs on a few small synthetic cases preprocessed with the ``tiny`` preset, with schedules cut down
further through plan overrides so each training run takes seconds on a CPU.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cmbunet.errors import MissingStageError, PlansMismatchError
from cmbunet.plans.plans_io import load_plans, plans_hash
from cmbunet.plans.schema import Augmentation
from cmbunet.training import cli as train_cli
from cmbunet.training import loop, progress
from cmbunet.training.augmentation import cut_patches, make_patches, rotate_and_crop
from cmbunet.training.checkpoint import CHECKPOINT_KEYS, load_checkpoint, load_stage_network
from cmbunet.training.false_positive_files import load_false_positives, save_false_positives
from cmbunet.training.losses import soft_dice_loss, weighted_cross_entropy
from cmbunet.training.metrics import rank_auc
from cmbunet.training.mining import merge_false_positives, mining_cases, retire_easy_false_positives
from cmbunet.training.samples import (NEGATIVE, POSITIVE, CaseArrays, SampleBank, build_bank, draw_epoch_samples,
                                      draw_fixed_samples, epoch_counts, split_counts, touches_cmb)
from cmbunet.training.screening_validation import candidate_hits
from cmbunet.training.stages import STAGE_TABLE
from plan_helpers import make_plans
from tiny_schedule import TINY_TRAINING_OVERRIDES

DATASET = "Dataset701_TrainTiny"
OVERRIDES = TINY_TRAINING_OVERRIDES


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    """Five small synthetic cases, planned with the tiny preset and preprocessed."""
    from cmbunet.plan_and_preprocess import main as plan_main
    from cmbunet.synthetic import write_dataset

    base = tmp_path_factory.mktemp("training")
    raw, pre = base / "raw", base / "preprocessed"
    write_dataset(raw / DATASET, 5, seed=11, size="small")
    assert plan_main(["-d", DATASET, "--preset", "tiny", "--raw-root", str(raw), "--preprocessed-root", str(pre),
                      "-np", "1", "--override", *OVERRIDES]) == 0
    return {"raw": raw, "pre": pre, "base": base}


def _train(roots: dict[str, Path], results: Path, *extra: str) -> int:
    return train_cli.main([DATASET, *extra, "--preprocessed-root", str(roots["pre"]), "--results-root", str(results)])


def _splits(roots) -> list[dict]:
    return json.loads((roots["pre"] / DATASET / "splits_final.json").read_text())


def _spatial_augmentation(**changes) -> Augmentation:
    """The planner's augmentation without the intensity transforms, with ``changes``."""
    return replace(make_plans().augmentation, intensity=None, **changes)


def _bank(roots, fold: int = 0) -> SampleBank:
    return build_bank(roots["pre"] / DATASET, _splits(roots)[fold]["train"])


# --------------------------------------------------------------------------------------------------------------
# samples, labels, proportions
# --------------------------------------------------------------------------------------------------------------
def test_positives_are_the_cmbs_of_the_training_cases(roots):
    bank = _bank(roots)
    expected = sum(len(json.loads((roots["pre"] / DATASET / "data" / f"{c}.json").read_text())["cmbs"])
                   for c in bank.names)
    assert expected > 0 and len(bank.positives) == expected
    # every positive centre lies on (or within one voxel of) its CMB: the central rule labels it positive
    for ci in np.unique(bank.positives[:, 0]):
        rows = bank.positives[bank.positives[:, 0] == ci]
        assert touches_cmb(bank.cases[ci].seg, rows[:, 1:4]).all()


def test_split_counts_keep_proportions_and_fill_missing_false_positives():
    assert split_counts(100, {"positive": 1, "negative": 2, "false_positive": 1}) == \
        {"positive": 25, "negative": 50, "false_positive": 25}
    assert sum(split_counts(7, {"positive": 1, "negative": 2, "false_positive": 1}).values()) == 7
    before_mining = epoch_counts(40, {"positive": 1, "negative": 2, "false_positive": 1}, num_false_positives=0)
    assert before_mining == {"positive": 10, "negative": 30}
    assert epoch_counts(40, {"positive": 1, "false_positive": 1}, num_false_positives=5) == \
        {"positive": 20, "false_positive": 20}


def test_epoch_draw_proportions_labels_and_negatives_inside_brain(roots):
    bank = _bank(roots)
    rng = np.random.default_rng(0)
    rows = draw_epoch_samples(bank, 64, {"positive": 1, "negative": 2, "false_positive": 1}, rng)
    assert np.bincount(rows[:, 4], minlength=3).tolist() == [16, 48, 0]  # no FPs mined yet
    neg = rows[rows[:, 4] == NEGATIVE]
    for ci in np.unique(neg[:, 0]):
        case = bank.cases[ci]
        centres = neg[neg[:, 0] == ci, 1:4]
        assert np.asarray(case.brain)[tuple(centres.T)].all()
        assert not touches_cmb(case.seg, centres, clearance=2).any()
    # with mined false positives the 1:2:1 mix is exact
    merge_false_positives(bank, np.array([[0, 5, 5, 5], [0, 6, 6, 6]]), np.array([0.3, 0.4]), epoch=1)
    rows = draw_epoch_samples(bank, 64, {"positive": 1, "negative": 2, "false_positive": 1}, rng)
    assert np.bincount(rows[:, 4], minlength=3).tolist() == [16, 32, 16]
    # labels after cutting and augmenting: positives keep their CMB in the central 2x2x2 block
    size = STAGE_TABLE["screening"].patch_size(load_plans(roots["pre"] / DATASET / "plans.json"))
    _, seg = make_patches(bank, rows, size, _spatial_augmentation(), rng)
    labels = STAGE_TABLE["screening"].targets(seg)
    assert labels[rows[:, 4] == POSITIVE].all()
    assert not labels[rows[:, 4] == NEGATIVE].any()
    # segmentation targets are the label patches themselves
    assert np.array_equal(STAGE_TABLE["segmentation"].targets(seg), (seg > 0).astype(np.int64))


def test_hard_sampling_draws_the_false_positives_the_network_still_takes_for_cmbs(roots):
    from cmbunet.training.hard_sampling import HARD_SAMPLING_FLOOR, hardness_weights

    w = hardness_weights(np.array([0.0, 0.0, 0.1, 0.9]))
    assert w.sum() == pytest.approx(1.0) and w[0] == pytest.approx(HARD_SAMPLING_FLOOR / 4)  # never forgotten
    assert w[3] > w[2] > w[1] and w[3] == pytest.approx(HARD_SAMPLING_FLOOR / 4 + (1 - HARD_SAMPLING_FLOOR) * 0.9)
    bank = _bank(roots)
    merge_false_positives(bank, np.array([[0, 5, 5, 5], [0, 6, 6, 6], [0, 7, 7, 7]]), np.zeros(3), epoch=1)
    bank.fp_weights = hardness_weights(np.array([0.0, 0.0, 1.0]))
    rows = draw_epoch_samples(bank, 4000, {"positive": 1, "false_positive": 1}, np.random.default_rng(0))
    fps = rows[rows[:, 4] == 2]
    share = (fps[:, 1] == 7).mean()  # the hard one: 1/12 + 3/4 of the draws
    assert abs(share - (HARD_SAMPLING_FLOOR / 3 + 1 - HARD_SAMPLING_FLOOR)) < 0.03


def test_candidate_sampling_draws_mostly_what_screening_keeps_at_inference(roots):
    from cmbunet.training.hard_sampling import CANDIDATE_SHARE, candidate_weights

    w = candidate_weights(np.array([0.2, 0.95, np.nan, 0.5]), 0.5)
    assert w.sum() == pytest.approx(1.0)
    assert w[0] == w[2] == pytest.approx((1 - CANDIDATE_SHARE) / 4)  # below the threshold or unknown: the floor
    assert w[1] == w[3] == pytest.approx((1 - CANDIDATE_SHARE) / 4 + CANDIDATE_SHARE / 2)
    # nothing to tell apart: drawn evenly
    assert candidate_weights(np.full(3, np.nan), 0.5) is None and candidate_weights(np.ones(3), 0.5) is None
    bank = _bank(roots)
    merge_false_positives(bank, np.array([[0, 5, 5, 5], [0, 6, 6, 6], [0, 7, 7, 7], [0, 8, 8, 8]]), np.zeros(4), 1)
    bank.fp_weights = candidate_weights(np.array([0.1, 0.2, 0.3, 0.9]), 0.5)
    rows = draw_epoch_samples(bank, 4000, {"false_positive": 1}, np.random.default_rng(0))
    assert abs((rows[:, 1] == 8).mean() - ((1 - CANDIDATE_SHARE) / 4 + CANDIDATE_SHARE)) < 0.03


def test_the_final_mining_pass_gives_every_false_positive_its_final_score(tmp_path):
    bank = SampleBank([CaseArrays("a", np.zeros((1, 4, 4, 4)), np.zeros((4, 4, 4), np.uint8), np.ones((4, 4, 4), bool),
                                  np.zeros((0, 3), np.int64), np.array([[0, 0, 0], [4, 4, 4]]))],
                      np.zeros((0, 4), np.int64))
    merge_false_positives(bank, np.array([[0, 1, 1, 1], [0, 2, 2, 2]]), np.array([.5, .6]), 7)
    assert np.isnan(bank.fp_final_scores).all()  # an intermediate pass knows no final score
    # the final pass: the pool re-scored by the final model (current), one FP found again, one new
    merge_false_positives(bank, np.array([[0, 2, 2, 2], [0, 3, 3, 3]]), np.array([.8, .7]), 20,
                          current=np.array([0.05, 0.8]))
    assert bank.false_positives.tolist() == [[0, 1, 1, 1], [0, 2, 2, 2], [0, 3, 3, 3]]
    assert np.allclose(bank.fp_scores, [.5, .6, .7]) and np.allclose(bank.fp_final_scores, [.05, .8, .7])
    save_false_positives(tmp_path / "fp.json", bank, 0.1)
    entries = json.loads((tmp_path / "fp.json").read_text())["false_positives"]
    assert [e["final_score"] for e in entries] == pytest.approx([.05, .8, .7])
    load_false_positives(tmp_path / "fp.json", bank)
    assert np.allclose(bank.fp_final_scores, [.05, .8, .7])
    # a list written before final scores were recorded loads with NaN
    for e in entries:
        e.pop("final_score")
    (tmp_path / "old.json").write_text(json.dumps({"false_positives": entries}))
    load_false_positives(tmp_path / "old.json", bank)
    assert len(bank.fp_final_scores) == 3 and np.isnan(bank.fp_final_scores).all()


def test_fixed_validation_set_is_reproducible(roots):
    bank = _bank(roots)
    a = draw_fixed_samples(bank, 20, {"positive": 1, "negative": 2}, seed=4)
    b = draw_fixed_samples(bank, 20, {"positive": 1, "negative": 2}, seed=4)
    assert np.array_equal(a, b) and len(np.unique(a, axis=0)) == len(a)


def test_mining_subsets_rotate_through_all_cases():
    passes = [mining_cases(10, 4, k, seed=3) for k in range(3)]
    assert all(len(p) == 4 and len(set(p)) == 4 for p in passes)
    assert set(passes[0]) | set(passes[1]) | set(passes[2]) == set(range(10))  # 12 draws cover all 10 cases
    assert not set(passes[0]) & set(passes[1])  # no case twice before every case came round once
    assert passes == [mining_cases(10, 4, k, seed=3) for k in range(3)]  # resume mines the same cases
    assert mining_cases(10, None, 0, 3) == list(range(10)) == mining_cases(10, 16, 1, 3)


def test_merge_false_positives_dedupes_and_keeps_first_epoch():
    bank = SampleBank([], np.zeros((0, 4), np.int64))
    assert merge_false_positives(bank, np.array([[0, 1, 2, 3], [1, 1, 2, 3], [0, 1, 2, 3]]), np.array([.5, .6, .7]), 1) == 2
    assert merge_false_positives(bank, np.array([[1, 1, 2, 3], [0, 9, 9, 9]]), np.array([.9, .2]), 2) == 1
    assert bank.false_positives.tolist() == [[0, 1, 2, 3], [1, 1, 2, 3], [0, 9, 9, 9]]
    assert bank.fp_epochs.tolist() == [1, 1, 2] and np.allclose(bank.fp_scores, [.5, .6, .2])


def test_hard_mining_retires_easy_fps_in_place_and_resume_restores_the_pool(tmp_path):
    bank = SampleBank([CaseArrays("a", np.zeros((1, 4, 4, 4)), np.zeros((4, 4, 4), np.uint8), np.ones((4, 4, 4), bool),
                                  np.zeros((0, 3), np.int64), np.array([[0, 0, 0], [4, 4, 4]])),
                       CaseArrays("b", np.zeros((1, 4, 4, 4)), np.zeros((4, 4, 4), np.uint8), np.ones((4, 4, 4), bool),
                                  np.zeros((0, 3), np.int64), np.array([[0, 0, 0], [4, 4, 4]]))],
                      np.zeros((0, 4), np.int64))
    merge_false_positives(bank, np.array([[0, 1, 1, 1], [0, 2, 2, 2], [1, 3, 3, 3]]), np.array([.5, .6, .7]), 1)
    # the model now scores the first FP 0.05 (< 0.1): retired; the third was not re-scored (NaN): kept
    assert retire_easy_false_positives(bank, np.array([0.05, 0.4, np.nan]), 0.1, epoch=2) == 1
    assert bank.active_false_positives.tolist() == [[0, 2, 2, 2], [1, 3, 3, 3]]
    assert bank.false_positives.tolist()[0] == [0, 1, 1, 1]  # stays in place: the order never changes
    draw = draw_epoch_samples(bank, 400, {"false_positive": 1}, np.random.default_rng(0))
    assert {tuple(r) for r in draw[:, :4]} == {(0, 2, 2, 2), (1, 3, 3, 3)}
    save_false_positives(tmp_path / "fp.json", bank, 0.1)
    content = json.loads((tmp_path / "fp.json").read_text())
    assert content["num_false_positives"] == 2 and content["num_retired"] == 1 and content["per_case"] == {"a": 1, "b": 1}
    # resuming before the retirement (after epoch 1) restores the pool of that time, in the same order
    assert load_false_positives(tmp_path / "fp.json", bank, max_epoch=1) == 3
    assert bank.active_false_positives.tolist() == [[0, 1, 1, 1], [0, 2, 2, 2], [1, 3, 3, 3]]
    assert load_false_positives(tmp_path / "fp.json", bank, max_epoch=2) == 2
    # found again by a later pass: back in use, keeping its first epoch and score
    assert merge_false_positives(bank, np.array([[0, 1, 1, 1]]), np.array([.9]), 3) == 0
    assert len(bank.active_false_positives) == 3 and bank.fp_epochs[0] == 1 and np.isclose(bank.fp_scores[0], .5)


# --------------------------------------------------------------------------------------------------------------
# augmentation
# --------------------------------------------------------------------------------------------------------------
def test_augmentation_without_rotation_or_flip_is_an_exact_cut(roots):
    bank = _bank(roots)
    rows = draw_epoch_samples(bank, 24, {"positive": 1, "negative": 1}, np.random.default_rng(1))
    plain = _spatial_augmentation(max_translation_vox=0, rotation_probability=0.0, flip_probability=0.0)
    d1, s1 = make_patches(bank, rows, (10, 10, 8), plain, np.random.default_rng(2))
    d2, s2 = cut_patches(bank, rows, (10, 10, 8))
    assert np.array_equal(d1, d2) and np.array_equal(s1, s2)
    flip = _spatial_augmentation(max_translation_vox=0, rotation_probability=0.0, flip_probability=1.0)
    d3, s3 = make_patches(bank, rows, (10, 10, 8), flip, np.random.default_rng(2))
    assert np.array_equal(d3, d2[:, :, ::-1]) and np.array_equal(s3, s2[:, ::-1])


def test_rotation_keeps_centre_and_moves_corners():
    big = np.zeros((1, 1, 21, 21, 21), np.float32)
    big[0, 0, 10, 10, 10] = 1.0  # the centre voxel
    big[0, 0, 10, 16, 10] = 1.0  # 6 voxels along y
    seg = (big[:, 0] > 0).astype(np.uint8)
    params = _spatial_augmentation(max_rotation_deg=10.0, rotation_probability=1.0)
    d, s = rotate_and_crop(big, seg, (15, 15, 15), params, np.random.default_rng(0))
    assert d[0, 0, 7, 7, 7] == pytest.approx(1.0, abs=1e-5) and s[0, 7, 7, 7] == 1
    assert d[0, 0, 7, 13, 7] < 0.9  # the off-centre voxel moved
    assert d.shape == (1, 1, 15, 15, 15)


# --------------------------------------------------------------------------------------------------------------
# schedule, losses, metrics
# --------------------------------------------------------------------------------------------------------------
def test_eta_counts_the_whole_volume_screening_still_to_come(roots):
    """Mining passes over whole volumes take minutes on VALDO-sized scans: once one pass is timed, the ETA adds
    the volumes still to screen (intermediate passes, the final pass, the validation volumes)."""
    from types import SimpleNamespace

    from cmbunet.training.loop import cases_still_to_screen
    from cmbunet.training.progress import stage_eta

    assert stage_eta([10.0, 100.0, 10.0], 2) == 20.0  # the median epoch: the mining epoch does not count twice
    assert stage_eta([10.0], 2, cases_to_screen=5, seconds_per_screened_case=3.0) == 35.0
    assert stage_eta([10.0], 2, cases_to_screen=5) == 20.0  # no pass timed yet: nothing guessed
    plans = load_plans(roots["pre"] / DATASET / "plans.json")
    schedule = replace(plans.schedule("screening", "cpu"), epochs=20, mining_epochs=(7, 14), mining_cases=4)
    bank, val = SimpleNamespace(cases=[0] * 10), SimpleNamespace(cases=[0] * 3)
    state = SimpleNamespace(screening_schedule=schedule, stage=STAGE_TABLE["screening"], bank=bank, val_bank=val,
                            epochs=20)
    assert cases_still_to_screen(state, 0) == 4 + 4 + 10 + 3  # passes after epochs 7 and 14, final, validation
    assert cases_still_to_screen(state, 7) == 4 + 10 + 3
    state.val_bank = bank  # fold all: validation reuses the final pass
    assert cases_still_to_screen(state, 15) == 10
    state.stage = STAGE_TABLE["discrimination"]
    assert cases_still_to_screen(state, 0) == 0


def test_poly_lr_decays_and_never_reaches_zero():
    lrs = [loop.poly_lr(0.01, e, 10) for e in range(10)]
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[-1] == pytest.approx(0.01 * 0.1 ** 0.9) and lrs[-1] > 0
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert lrs[5] == pytest.approx(0.01 * 0.5 ** 0.9)


def test_losses():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]]).reshape(2, 2, 1, 1, 1)
    target = torch.tensor([1, 1])
    ce = weighted_cross_entropy([0.25, 0.75])(logits, target)
    expected = torch.nn.functional.cross_entropy(logits.reshape(2, 2), target)
    assert float(ce) == pytest.approx(float(expected))  # same class in both: weights cancel
    perfect = torch.zeros(1, 2, 4, 4, 4)
    tgt = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    tgt[0, 1:3, 1:3, 1:3] = 1
    perfect[:, 1] = 20 * (2 * tgt.float() - 1)
    assert float(soft_dice_loss(perfect, tgt)) < 1e-4
    assert float(soft_dice_loss(-perfect, tgt)) > 0.99


def test_rank_auc_matches_pair_counting():
    rng = np.random.default_rng(3)
    scores, labels = rng.integers(0, 5, 40).astype(float), rng.random(40) < 0.4
    pos, neg = scores[labels], scores[~labels]
    pairs = (pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()
    assert rank_auc(scores, labels) == pytest.approx(pairs)
    assert rank_auc(np.array([0.1, 0.9]), np.array([0, 1])) == 1.0
    assert np.isnan(rank_auc(np.array([0.1, 0.9]), np.array([1, 1])))


def test_candidate_hits():
    seg = np.zeros((20, 20, 20), np.uint8)
    seg[5:7, 5:7, 5:7] = 1
    seg[14, 14, 14] = 1
    detected, is_fp, n = candidate_hits(seg, np.array([[6, 6, 6], [10, 10, 10], [16, 16, 16]]), tolerance=1)
    assert n == 2 and detected.tolist() == [1, 2] and is_fp.tolist() == [False, True, False]


def test_fold_all_validation_reuses_the_final_mining_pass_with_the_same_result(roots):
    """Fold ``all`` validates screening on its training volumes: the candidates of the final mining pass (same
    weights, lower threshold) must give what a fresh pass over the volumes gives."""
    from cmbunet.networks import build_network
    from cmbunet.training.mining import mine_false_positives, mining_precision
    from cmbunet.training.screening_validation import screening_validation

    plans = load_plans(roots["pre"] / DATASET / "plans.json")
    torch.manual_seed(3)
    net = build_network("screening", plans).eval()
    bank = _bank(roots)
    cached: dict = {}
    rows, _, _ = mine_false_positives(net, bank, plans, 0.1, candidates=cached)
    assert sorted(cached) == list(range(len(bank.cases))) and sum(len(c) for c, _ in cached.values()) > len(rows) > 0
    fresh = screening_validation(net, bank, plans, 0.3, precision=mining_precision())  # bf16 where the CPU has it
    reused = screening_validation(net, bank, plans, 0.3, candidates=cached)
    assert fresh["cases"] == reused["cases"] and fresh["cases"][0]["candidates"] > 0
    assert np.array_equal(fresh["fp_rows"], reused["fp_rows"]) and np.allclose(fresh["fp_scores"], reused["fp_scores"])


@pytest.mark.parametrize("stage, fold, held_out", [("segmentation", "all", False), ("screening", 2, True)])
def test_progress_plot_names_stage_fold_and_what_it_validates_on(stage, fold, held_out, tmp_path):
    """Fold all has no validation cases: its curves are training patches and must not be called validation.
    The monitored metric is plotted once (segmentation monitors Dice, which is also a plotted metric)."""
    monitor = STAGE_TABLE[stage].monitor
    metrics = ["dice"] if stage == "segmentation" else ["sensitivity", "precision", "f1", "f2", "auc"]
    history = {"epoch": [0, 1, 2], "lr": [0.01, 0.006, 0.002], "train_loss": [0.9, 0.7, 0.6],
               "val_loss": [1.0, 0.8, None], **{f"val_{m}": [0.2, 0.4, 0.5] for m in metrics}}
    fig = progress.progress_figure(history, monitor, stage, fold, held_out)
    labels = [[line.get_label() for line in ax.get_lines()] for ax in fig.axes]
    curve = (lambda m: f"validation {m}") if held_out else (lambda m: f"{m} on fixed training patches")
    expected_metrics = [m for m in ("sensitivity", "precision", "auc", "dice") if m in metrics] + \
        ([monitor] if monitor != "dice" else [])
    assert labels[1] == [curve(m) + (" (selects checkpoint_best)" if m == monitor else "") for m in expected_metrics]
    assert labels[0] == ["training loss (augmented epoch batches)", curve("loss")]
    assert labels[2] == ["learning rate"]
    title = fig.get_suptitle()
    assert title.startswith(f"{stage} stage, fold {fold}\n")
    assert ("TRAINING" in title) != held_out
    assert not any("validation" in label for label in labels[0] + labels[1]) or held_out
    progress.plot_progress(history, tmp_path / "progress.png", monitor, stage, fold, held_out)
    assert (tmp_path / "progress.png").stat().st_size > 10_000


# --------------------------------------------------------------------------------------------------------------
# the command line, checkpoints, resume, DDP
# --------------------------------------------------------------------------------------------------------------
def test_cli_trains_all_stages_of_fold_0(roots, tmp_path, capsys):
    assert _train(roots, tmp_path, "0", "--seed", "1", "-npp", "1") == 0
    out = capsys.readouterr().out
    model_dir = tmp_path / DATASET / "cmbunet"
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        assert (model_dir / name).is_file()
    plans = load_plans(model_dir / "plans.json")
    for stage in ("screening", "discrimination", "segmentation"):
        folder = model_dir / "fold_0" / stage
        for f in ("checkpoint_latest.pth", "checkpoint_best.pth", "checkpoint_final.pth", "training_log.txt",
                  "progress.png"):
            assert (folder / f).is_file(), f"{stage}/{f}"
        ckpt = torch.load(folder / "checkpoint_final.pth", weights_only=True)
        assert set(CHECKPOINT_KEYS) <= set(ckpt) and ckpt["stage"] == stage
        assert ckpt["plans_hash"] == plans_hash(plans)
        epochs = plans.schedule(stage, "cpu").epochs
        assert ckpt["epoch"] == epochs - 1 and len(ckpt["history"]["train_loss"]) == epochs
        assert all(np.isfinite(ckpt["history"]["train_loss"]))
        net = load_stage_network(model_dir, 0, stage, plans)
        assert not net.training
    scr = model_dir / "fold_0" / "screening"
    fps = json.loads((scr / "false_positives.json").read_text())
    assert fps["num_false_positives"] == len(fps["false_positives"]) > 0
    assert {f["case"] for f in fps["false_positives"]} <= set(_splits(roots)[0]["train"])
    # the pass after epoch 1 screened the schedule's 2 cases (mining_cases), the final pass all of them
    assert len({f["case"] for f in fps["false_positives"] if f["epoch"] == 1}) <= 2
    assert "screened 2 of" in (scr / "training_log.txt").read_text()
    val = json.loads((scr / "validation_candidates.json").read_text())
    assert 0.0 <= val["sensitivity"] <= 1.0 and val["false_positives_per_case"] >= 0
    log = (scr / "training_log.txt").read_text()
    assert "epoch 3/3" in log and "candidate sensitivity" in log
    # a checkpoint from other plans is refused
    with pytest.raises(PlansMismatchError):
        load_checkpoint(scr / "checkpoint_final.pth", expected_plans_hash="0" * 16)
    # the finished fold's validation cases were predicted and scored with the whole pipeline
    validation = model_dir / "fold_0" / "validation"
    summary = json.loads((validation / "summary.json").read_text())
    assert set(summary["per_case"]) == set(_splits(roots)[0]["val"])
    assert all((validation / f"{case}_probabilities.nii.gz").is_file() for case in summary["per_case"])
    # every epoch line tells the time left; the run ends with a summary: each stage's time and validation, the
    # fold's whole-pipeline F1 (the numbers of summary.json) and the thresholds in force
    assert re.search(r"epoch 2/3 .* eta \d+s", log)
    tail = out[out.index("== cmbunet_train summary: fold 0"):]
    for stage in ("screening", "discrimination", "segmentation"):
        info = json.loads((model_dir / "fold_0" / stage / "stage_summary.json").read_text())
        assert info["seconds"] > 0 and info["epochs"] == plans.schedule(stage, "cpu").epochs
        assert re.search(rf"{stage}\s+\d+(m\d\ds|s)\s+{info['epochs']} epochs\s+best", tail)
    assert f"F1 {summary['aggregate']['f1_pooled']:.3f}" in tail
    assert "discrimination_threshold=" in tail


def test_resume_after_interruption_equals_uninterrupted_run(roots, tmp_path, monkeypatch):
    args = ("0", "-s", "screening", "--seed", "5", "-npp", "0")
    assert _train(roots, tmp_path / "straight", *args) == 0

    original = loop.save_checkpoint
    calls = {"n": 0}

    def save_then_interrupt(path, ckpt):
        original(path, ckpt)
        calls["n"] += 1
        if Path(path).name == "checkpoint_latest.pth" and ckpt["epoch"] == 0:
            raise KeyboardInterrupt  # Ctrl-C right after the first epoch was saved

    monkeypatch.setattr(loop, "save_checkpoint", save_then_interrupt)
    assert _train(roots, tmp_path / "resumed", *args) == 130
    folder = tmp_path / "resumed" / DATASET / "cmbunet" / "fold_0" / "screening"
    assert load_checkpoint(folder / "checkpoint_latest.pth")["epoch"] == 0
    assert not (folder / "checkpoint_final.pth").exists()
    monkeypatch.setattr(loop, "save_checkpoint", original)
    assert _train(roots, tmp_path / "resumed", *args[:-1], "1", "--c") == 0  # another worker count, too

    a = load_checkpoint(tmp_path / "straight" / DATASET / "cmbunet" / "fold_0" / "screening" / "checkpoint_final.pth")
    b = load_checkpoint(folder / "checkpoint_final.pth")
    assert a["epoch"] == b["epoch"] == 2
    for k in a["weights"]:
        assert torch.equal(a["weights"][k], b["weights"][k]), k
    assert a["history"]["train_loss"] == b["history"]["train_loss"]
    fp_a = json.loads((tmp_path / "straight" / DATASET / "cmbunet" / "fold_0" / "screening" /
                       "false_positives.json").read_text())
    assert fp_a == json.loads((folder / "false_positives.json").read_text())
    # continuing a finished stage does nothing
    assert _train(roots, tmp_path / "resumed", *args, "--c") == 0


def test_ddp_with_two_cpu_processes(roots, tmp_path):
    assert _train(roots, tmp_path, "0", "-s", "screening", "--seed", "2", "--num-gpus", "2", "-npp", "0") == 0
    folder = tmp_path / DATASET / "cmbunet" / "fold_0" / "screening"
    ckpt = torch.load(folder / "checkpoint_final.pth", weights_only=True)
    assert ckpt["epoch"] == 2 and all(np.isfinite(ckpt["history"]["train_loss"]))
    assert not any(k.startswith("module.") for k in ckpt["weights"])
    assert "2 process(es)" in (folder / "training_log.txt").read_text()


def test_torchrun_with_two_cpu_processes(roots, tmp_path):
    """Under torchrun every rank runs the command: rank 0 takes the fold's lock and writes the summary, the
    other ranks only train (before, every rank but one stopped at the lock)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "cmbunet.training.cli", DATASET, "0", "-s", "screening", "--seed", "2", "-npp", "0",
                          "-device", "cpu", "--preprocessed-root", str(roots["pre"]), "--results-root", str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    folder = tmp_path / DATASET / "cmbunet" / "fold_0" / "screening"
    assert torch.load(folder / "checkpoint_final.pth", weights_only=True)["epoch"] == 2
    assert "2 process(es)" in (folder / "training_log.txt").read_text()
    assert run.stdout.count("cmbunet_train summary") == 1 and "already" not in run.stderr


def test_fold_whose_validation_cases_hold_no_cmb_is_refused_naming_them(roots, tmp_path, capsys):
    import shutil

    pre = tmp_path / "preprocessed"
    shutil.copytree(roots["pre"], pre)
    val_case = _splits(roots)[0]["val"][0]
    splits = _splits(roots)
    splits[0]["val"] = [val_case]
    (pre / DATASET / "splits_final.json").write_text(json.dumps(splits))
    for props in (pre / DATASET).rglob(f"data/{val_case}.json"):
        info = json.loads(props.read_text())
        info["cmbs"] = []
        props.write_text(json.dumps(info))
    code = train_cli.main([DATASET, "0", "-s", "screening", "--preprocessed-root", str(pre),
                           "--results-root", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == 2 and f"1 validation case(s) of fold 0 hold no CMB ({val_case})" in err, err


def test_stage_without_its_prerequisite_is_refused(roots, tmp_path, capsys):
    assert _train(roots, tmp_path, "0", "-s", "discrimination") == 2
    err = capsys.readouterr().err
    assert "needs a trained screening stage" in err and "checkpoint_final.pth" in err
    assert not (tmp_path / DATASET / "cmbunet" / "fold_0" / "discrimination").exists()
    plans = load_plans(roots["pre"] / DATASET / "plans.json")
    with pytest.raises(MissingStageError, match="checkpoint_final.pth"):
        load_stage_network(tmp_path / DATASET / "cmbunet", 0, "segmentation", plans)


def test_candidate_sampling_takes_final_screening_scores_and_rescores_an_older_list(roots, tmp_path):
    """``fp_sampling="candidates"`` needs the final screening model's score of every mined false positive: the
    final mining pass records it; a list written without it is scored once by the discrimination stage."""
    from cmbunet.plan_and_preprocess import main as plan_main

    assert plan_main(["-d", DATASET, "--preset", "tiny", "--raw-root", str(roots["raw"]), "--preprocessed-root",
                      str(roots["pre"]), "-np", "1", "-p", "candidates", "--override", *OVERRIDES,
                      "training.cpu.discrimination.fp_sampling=candidates"]) == 0
    common = ("0", "-p", "candidates", "--seed", "2", "--no-validation")
    assert _train(roots, tmp_path, *common, "-s", "screening") == 0
    fp_file = tmp_path / DATASET / "cmbunet__candidates" / "fold_0" / "screening" / "false_positives.json"
    content = json.loads(fp_file.read_text())
    final = [f["final_score"] for f in content["false_positives"]]
    assert len(final) > 0 and all(0.0 <= s <= 1.0 for s in final)
    # found by the final pass itself: its final score is its score
    assert all(f["final_score"] == f["score"] for f in content["false_positives"] if f["epoch"] == 3)
    for f in content["false_positives"]:
        f.pop("final_score")
    fp_file.write_text(json.dumps(content))
    assert _train(roots, tmp_path, *common, "-s", "discrimination") == 0
    log = (fp_file.parent.parent / "discrimination" / "training_log.txt").read_text()
    assert "holds no final screening scores" in log
    assert re.search(r"false positives: 75% of the draws among the \d+ of \d+|false positives drawn evenly", log)
    rescored = json.loads(fp_file.read_text())["false_positives"]  # saved: the next run need not screen again
    assert [f["final_score"] for f in rescored] == pytest.approx(final, abs=1e-4)


@pytest.mark.parametrize("fold, message", [("9", "fold 9 does not exist"), ("x", "fold must be")])
def test_bad_fold_is_a_clear_error(roots, tmp_path, capsys, fold, message):
    assert _train(roots, tmp_path, fold) == 2
    assert message in capsys.readouterr().err
