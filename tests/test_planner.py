"""Planner and plans I/O: Chen & Dou reproduced from a fingerprint, valid topologies elsewhere, presets, overrides,
hash."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from cmbunet.errors import CMBUNetError, InputError
from cmbunet.plans import Plans, apply_overrides, load_plans, plan_experiment, plans_hash, save_plans
from cmbunet.plans.schema import STAGES
from cmbunet.plans.planner import INTENSITY_AUGMENTATION, first_kernel_sizes, quantile_box, target_spacing_from_cases
from cmbunet.utilities.file_io import save_json

DATASET_JSON = {"channel_names": {"0": "T2S"}, "labels": {"background": 0, "CMB": 1}, "numTraining": 10, "file_ending": ".nii.gz"}
VALDO_SPACING = [0.49, 0.49, 0.8]


def make_fingerprint(extents_vox, spacing=VALDO_SPACING, n_cases=10, shape=(400, 400, 150)) -> dict:
    """A fingerprint with ``n_cases`` identical cases and CMBs of the given extents (voxels at ``spacing``)."""
    sp = np.asarray(spacing, float)
    cases = [{"case": f"c{i:02d}", "spacing": list(spacing), "shape": list(shape), "shape_after_crop": list(shape),
              "num_cmbs": 0} for i in range(n_cases)]
    cmbs = [{"case": "c00", "extent_vox": list(map(int, e)), "extent_mm": (np.asarray(e) * sp).tolist(),
             "volume_vox": int(np.prod(e)), "volume_mm3": float(np.pi / 6 * np.prod(e) * np.prod(sp))}
            for e in extents_vox]
    return {"fingerprint_version": 1, "cases": cases, "cmbs": cmbs}


def valdo_like_extents(n_large: int = 16) -> list[list[int]]:
    """1000 CMBs: 984 - (16 - n_large) fit 14x14x10 (the largest of them exactly that size), the rest are 20x20x14."""
    rng = np.random.default_rng(0)
    n_small = 1000 - n_large
    small = np.column_stack([rng.integers(3, 15, n_small), rng.integers(3, 15, n_small), rng.integers(2, 11, n_small)])
    small[0] = [14, 14, 10]
    return small.tolist() + [[20, 20, 14]] * n_large


@pytest.fixture(scope="module")
def paper_fp() -> dict:
    return make_fingerprint(valdo_like_extents())


@pytest.fixture(scope="module")
def auto_plans(paper_fp) -> Plans:
    return plan_experiment(paper_fp, DATASET_JSON, dataset_name="Dataset001_Test")


# --------------------------------------------------------------------------------------- layer arithmetic
def screening_output(block, k1, k5):
    """Output size of the screening FCN on ``block``, layer by layer (Chen & Dou Table 1); None when a layer fails."""
    sizes = []
    for b, a, c in zip(block, k1, k5):
        s = b - (a - 1)  # C1
        s = s - (a - 1)  # C2
        if s % 2:
            return None  # the 2x2x2 pool would drop a voxel: block and stride would not line up
        s = s // 2  # M1
        s = s - 2 - 2  # C3, C4
        s = s - (c - 1)  # C5
        sizes.append(s)  # C6 is 1x1x1
    return sizes


def discrimination_output(block, k1):
    sizes = []
    for b, a in zip(block, k1):
        s = b - 2 * (a - 1)
        if s % 2:
            return None
        sizes.append(s // 2 - 4)
    return sizes


# ------------------------------------------------------------------------------- Chen & Dou reproduced
def test_paper_numbers_from_fingerprint(auto_plans):
    p = auto_plans.to_dict()
    assert p["plans_version"] == 1 and p["preset"] == "auto" and p["dataset_name"] == "Dataset001_Test"
    assert p["target_spacing"] == pytest.approx(VALDO_SPACING)
    assert p["cmb_box"]["extent_vox"] == [14, 14, 10] and p["cmb_box"]["box_vox"] == [20, 20, 16]
    assert p["cmb_box"]["coverage"] == pytest.approx(0.984) and p["cmb_box"]["num_cmbs"] == 1000
    s, d, g = p["screening"], p["discrimination"], p["segmentation"]
    assert s["block_size"] == [20, 20, 16] and s["fcn_stride"] == [2, 2, 2] and s["fcn_offset"] == [10, 10, 8]
    # Chen & Dou's screening widths are 64-64-128-128-256 (preset paper); auto halves them (benchmarks.md, 6h)
    assert s["network"] == {"in_channels": 1, "features": [32, 32, 64, 64, 128], "first_kernels": [5, 5, 3],
                            "last_kernel": [2, 2, 2], "num_classes": 2, "negative_slope": 0.01}
    assert d["block_size"] == [24, 24, 20]
    assert d["network"] == {"in_channels": 1, "features": [64, 64, 128, 128], "first_kernels": [5, 5, 3],
                            "fc_features": 512, "dropout": 0.5, "num_classes": 2, "negative_slope": 0.01}
    assert g["patch_size"] == [32, 32, 24] and g["network"]["features"] == [32, 64, 128, 256]
    median_vox = np.median([np.pi / 6 * np.prod(e) for e in valdo_like_extents()])
    assert p["cmb_box"]["median_cmb_voxels"] == pytest.approx(median_vox, rel=1e-3)
    assert g["network"]["foreground_prior"] == pytest.approx(0.5 * median_vox / (32 * 32 * 24), rel=1e-3)
    assert screening_output(s["block_size"], [5, 5, 3], [2, 2, 2]) == [1, 1, 1]
    assert discrimination_output(d["block_size"], [5, 5, 3]) == [4, 4, 4]  # Chen & Dou Table 2: 128 x 4x4x4
    inf = p["inference"]
    assert inf["nms_size_vox"] == [5, 5, 5] and inf["tile_size"] == [160, 160, 80]
    assert inf["screening_threshold"] == 0.5 and inf["discrimination_shift_vox"] == 1
    assert p["resampling"]["separate_z"] is False and p["resampling"]["image_order"] == 3
    assert p["normalization"] == {"scheme": "zscore_foreground_per_case", "background_value": 0.0}
    assert p["augmentation"] == {"max_translation_vox": 3, "max_rotation_deg": 10.0, "flip_axes": [0], "flip_probability": 0.5,
                                 "rotation_probability": 0.5, "intensity": INTENSITY_AUGMENTATION}
    assert p["augmentation"]["intensity"]["low_resolution_zoom"][2][0] < p["augmentation"]["intensity"]["low_resolution_zoom"][0][0]
    assert p["overrides"] == [] and "rule" in p["cmb_box"] and p["target_spacing_rule"]


def test_one_more_large_cmb_grows_the_box():
    """With 17 of 1000 CMBs above 14x14x10, 14x14x10 covers 98.3% < 98.4%, so the box must hold 20x20x14."""
    p = plan_experiment(make_fingerprint(valdo_like_extents(n_large=17)), DATASET_JSON).to_dict()
    assert p["cmb_box"]["extent_vox"] == [20, 20, 14]
    assert p["screening"]["block_size"] == [26, 26, 20]
    assert p["screening"]["network"]["last_kernel"] == [5, 5, 4]


def test_gpu_schedule_is_002(auto_plans):
    gpu = auto_plans.to_dict()["training"]["gpu"]
    scr, disc, seg = gpu["screening"], gpu["discrimination"], gpu["segmentation"]
    assert (scr["epochs"], scr["samples_per_epoch"], scr["batch_size"]) == (150, 200_000, 128)
    assert (scr["optimizer"], scr["lr"], scr["momentum"], scr["nesterov"]) == ("sgd", 0.01, 0.99, True)
    assert scr["loss"] == "weighted_ce" and scr["class_weights"] == [0.25, 0.75]
    assert scr["proportions"] == {"positive": 1, "negative": 2, "false_positive": 1}
    assert scr["mining_epochs"] == [50, 80, 120] and scr["mining_threshold"] == 0.1 and scr["val_samples"] == 2000
    assert (disc["epochs"], disc["samples_per_epoch"]) == (80, 100_000)
    assert disc["proportions"] == {"positive": 1, "false_positive": 1} and "mining_epochs" not in disc
    assert (seg["epochs"], seg["samples_per_epoch"], seg["batch_size"]) == (100, 8000, 64)
    assert (seg["optimizer"], seg["lr"], seg["loss"]) == ("adam", 0.001, "dice_ce")
    cpu = auto_plans.to_dict()["training"]["cpu"]
    assert (cpu["screening"]["epochs"], cpu["screening"]["samples_per_epoch"]) == (20, 1500)
    assert cpu["screening"]["mining_epochs"] == [7, 14]


# --------------------------------------------------------------------------------------- other data
@pytest.mark.parametrize("spacing", [[1.0, 1.0, 1.0], [0.5, 0.5, 3.0], [0.45, 0.45, 1.0], [0.3, 0.6, 1.2], [0.9, 0.9, 0.5]])
@pytest.mark.parametrize("seed", [1, 2])
def test_other_spacings_give_valid_topologies(spacing, seed):
    rng = np.random.default_rng(seed)
    extents_mm = rng.uniform(0.5, 9.0, size=(50, 3))
    sp = np.asarray(spacing)
    fp = make_fingerprint(np.ceil(extents_mm / sp).astype(int), spacing=spacing)
    p = plan_experiment(fp, DATASET_JSON).to_dict()
    s = p["screening"]
    block, k1, k5 = s["block_size"], s["network"]["first_kernels"], s["network"]["last_kernel"]
    box = p["cmb_box"]["box_vox"]
    for b, a, c, x in zip(block, k1, k5, box):
        assert a in (3, 5) and c >= 1
        assert b == 2 * (a - 1) + 2 * (4 + c)
        assert b >= x and (c == 1 or b - 2 < x)  # the smallest valid block holding the box
    assert screening_output(block, k1, k5) == [1, 1, 1]
    assert s["fcn_offset"] == [b // 2 for b in block]
    assert min(discrimination_output(p["discrimination"]["block_size"], k1)) >= 1
    for patch, b in zip(p["segmentation"]["patch_size"], block):
        assert patch % 8 == 0 and patch >= 1.5 * b > patch - 8
    for t, b in zip(p["inference"]["tile_size"], block):
        assert t >= 2 * b and (t - b) % 2 == 0


def test_first_kernels():
    assert first_kernel_sizes([0.49, 0.49, 0.8]) == [5, 5, 3]
    assert first_kernel_sizes([1.0, 1.0, 1.0]) == [5, 5, 5]
    assert first_kernel_sizes([0.5, 0.5, 0.625]) == [5, 5, 5]  # 4.0: ties go to 5
    assert first_kernel_sizes([0.5, 0.5, 0.7]) == [5, 5, 3]  # 3.57 -> 3
    assert first_kernel_sizes([0.5, 0.5, 5.0]) == [5, 5, 3]  # 0.5 clipped to 3


def test_quantile_box_grows_until_joint_coverage():
    """Per-axis 90% quantiles (2,2,2) hold only 8/10 CMBs jointly; the next box along the order statistics holds all."""
    extents = np.array([[10, 1, 1], [1, 1, 10]] + [[2, 2, 2]] * 8)
    box, coverage = quantile_box(extents, 0.9)
    assert box == [10, 2, 10] and coverage == 1.0
    box, coverage = quantile_box(extents, 0.8)
    assert box == [2, 2, 2] and coverage == pytest.approx(0.8)
    with pytest.raises(CMBUNetError, match="no CMB"):
        quantile_box(np.zeros((0, 3)), 0.9)


def test_few_tiny_cmbs_give_the_smallest_topology():
    p = plan_experiment(make_fingerprint([[1, 1, 1]]), DATASET_JSON).to_dict()
    assert p["screening"]["block_size"] == [18, 18, 14]
    assert p["screening"]["network"]["last_kernel"] == [1, 1, 1]
    assert p["discrimination"]["block_size"] == [22, 22, 18]


def test_no_cmb_is_a_clear_error():
    with pytest.raises(CMBUNetError, match="no CMB"):
        plan_experiment(make_fingerprint([]), DATASET_JSON)


# --------------------------------------------------------------------------------------- target spacing
def test_anisotropy_rule_uses_10th_percentile():
    z = [1.0, 3.0] + [5.0] * 8
    spacings = np.array([[0.5, 0.5, s] for s in z])
    shapes = np.array([[400, 400, 30]] * 10)
    target, rule = target_spacing_from_cases(spacings, shapes)
    assert target == pytest.approx([0.5, 0.5, 2.8])  # 10th percentile of z: 1 + 0.9 * (3 - 1)
    assert "10th percentile" in rule
    # many slices: the coarse axis is not thin, so the median stays
    target, rule = target_spacing_from_cases(spacings, np.array([[400, 400, 200]] * 10))
    assert target == pytest.approx([0.5, 0.5, 5.0]) and "not triggered" in rule
    # the 10th percentile is never finer than the other axes
    target, _ = target_spacing_from_cases(np.array([[0.5, 0.5, s] for s in [0.4, 0.4] + [5.0] * 8]), shapes)
    assert target[2] == pytest.approx(0.5 + 1e-5)


def test_separate_z_follows_target_spacing():
    p = plan_experiment(make_fingerprint([[6, 6, 2]], spacing=[0.5, 0.5, 3.0], shape=(400, 400, 200)), DATASET_JSON).to_dict()
    assert p["target_spacing"] == pytest.approx([0.5, 0.5, 3.0]) and p["resampling"]["separate_z"] is True
    assert p["screening"]["network"]["first_kernels"] == [5, 5, 3]


# --------------------------------------------------------------------------------------- presets
def test_paper_preset_ignores_the_data():
    fp = make_fingerprint([[3, 3, 3]] * 5, spacing=[1.0, 1.0, 1.0])
    p = plan_experiment(fp, DATASET_JSON, preset="paper").to_dict()
    assert p["preset"] == "paper"
    assert p["screening"]["block_size"] == [20, 20, 16] and p["screening"]["network"]["first_kernels"] == [5, 5, 3]
    assert p["screening"]["network"]["last_kernel"] == [2, 2, 2]
    assert p["screening"]["network"]["features"] == [64, 64, 128, 128, 256]  # Chen & Dou Table 1
    assert p["inference"]["screening_threshold"] == 0.1
    assert p["discrimination"]["network"]["features"] == [64, 64, 128, 128]
    assert p["discrimination"]["block_size"] == [24, 24, 20] and p["segmentation"]["patch_size"] == [32, 32, 24]
    assert p["training"]["cpu"] == p["training"]["gpu"]
    assert p["training"]["cpu"]["screening"]["samples_per_epoch"] == 200_000


def test_tiny_preset(paper_fp, auto_plans):
    p = plan_experiment(paper_fp, DATASET_JSON, preset="tiny").to_dict()
    assert p["screening"]["network"]["features"] == [8, 8, 16, 16, 32]
    assert p["discrimination"]["network"]["features"] == [8, 8, 16, 16] and p["discrimination"]["network"]["fc_features"] == 32
    assert p["segmentation"]["network"]["features"] == [4, 8, 16, 32]
    assert p["screening"]["block_size"] == auto_plans.to_dict()["screening"]["block_size"]
    for device in ("gpu", "cpu"):
        for stage, sched in p["training"][device].items():
            assert 2 <= sched["epochs"] <= 3 and sched["samples_per_epoch"] <= 200 and sched["batch_size"] == 16
    assert p["training"]["cpu"]["screening"]["mining_epochs"] == [1]
    with pytest.raises(CMBUNetError, match="unknown preset"):
        plan_experiment(paper_fp, DATASET_JSON, preset="huge")


def test_fast_preset_is_auto_at_quarter_width_with_a_short_schedule(paper_fp, auto_plans):
    p = plan_experiment(paper_fp, DATASET_JSON, preset="fast")
    paper = plan_experiment(paper_fp, DATASET_JSON, preset="paper")
    assert p.preset == "fast"
    for stage in STAGES:  # a quarter of Chen & Dou's widths
        full, quarter = paper.stage(stage).network.features, p.stage(stage).network.features
        assert tuple(f // 4 for f in full) == tuple(quarter)
    assert tuple(f // 2 for f in auto_plans.screening.network.features) == tuple(p.screening.network.features)
    assert p.discrimination.network.fc_features == auto_plans.discrimination.network.fc_features // 4
    assert p.target_spacing == auto_plans.target_spacing and p.normalization == auto_plans.normalization
    assert p.inference == auto_plans.inference
    assert p.screening.block_size == auto_plans.screening.block_size
    assert p.training.gpu == p.training.cpu
    cpu = {stage: p.schedule(stage, "cpu") for stage in STAGES}
    assert [cpu[s].epochs for s in STAGES] == [10, 30, 36]
    assert tuple(cpu["screening"].mining_epochs) == (3, 6) and cpu["segmentation"].lr == 0.01
    # discrimination, which decides the false positives, gets the most samples
    samples = {s: cpu[s].epochs * cpu[s].samples_per_epoch for s in STAGES}
    assert max(samples, key=samples.get) == "discrimination"


def test_channels_follow_dataset_json(paper_fp):
    dj = dict(DATASET_JSON, channel_names={"0": "T2S", "1": "T1"})
    p = plan_experiment(paper_fp, dj).to_dict()
    assert p["num_input_channels"] == 2
    assert all(p[s]["network"]["in_channels"] == 2 for s in ("screening", "discrimination", "segmentation"))


# --------------------------------------------------------------------------------------- overrides
def test_override_threshold_and_string(auto_plans):
    p = apply_overrides(auto_plans, ["inference.screening_threshold=0.3", "inference.discrimination_aggregate=mean"]).to_dict()
    assert p["inference"]["screening_threshold"] == 0.3 and p["inference"]["discrimination_aggregate"] == "mean"
    assert p["overrides"] == ["inference.screening_threshold=0.3", "inference.discrimination_aggregate=mean"]
    assert auto_plans.inference.screening_threshold == 0.5 and list(auto_plans.overrides) == []


def test_override_block_rederives_dependents(auto_plans):
    p = apply_overrides(auto_plans, ["screening.block_size=[22,22,18]"]).to_dict()
    s = p["screening"]
    assert s["network"]["last_kernel"] == [3, 3, 3] and s["fcn_offset"] == [11, 11, 9]
    assert screening_output(s["block_size"], s["network"]["first_kernels"], s["network"]["last_kernel"]) == [1, 1, 1]
    assert p["discrimination"]["block_size"] == [26, 26, 22]
    assert p["segmentation"]["patch_size"] == [40, 40, 32]
    prior = auto_plans.segmentation.network.foreground_prior  # same expected CMB mass, larger patch
    assert p["segmentation"]["network"]["foreground_prior"] == pytest.approx(prior * (32 * 32 * 24) / (40 * 40 * 32), rel=1e-3)
    assert p["inference"]["nms_size_vox"] == [5, 5, 5] and p["inference"]["tile_size"] == [160, 160, 80]
    # an explicit dependent value wins over the re-derived one; list items can be set by index
    p = apply_overrides(auto_plans, ["screening.block_size.2=18", "segmentation.patch_size=[32,32,24]"]).to_dict()
    assert p["screening"]["block_size"] == [20, 20, 18] and p["segmentation"]["patch_size"] == [32, 32, 24]
    assert p["discrimination"]["block_size"] == [24, 24, 22]


def test_override_first_kernels_and_features(auto_plans):
    p = apply_overrides(auto_plans, ["screening.network.first_kernels=[3,3,3]", "screening.network.features=[8,8,16,16,32]"]).to_dict()
    assert p["screening"]["network"]["last_kernel"] == [4, 4, 2]  # (20-4)/2-4, (16-4)/2-4
    assert screening_output([20, 20, 16], [3, 3, 3], [4, 4, 2]) == [1, 1, 1]
    assert p["discrimination"]["network"]["first_kernels"] == [3, 3, 3]
    assert p["screening"]["network"]["features"] == [8, 8, 16, 16, 32]
    assert p["discrimination"]["network"]["features"] == [64, 64, 128, 128]


def test_plan_experiment_applies_overrides_last(paper_fp):
    p = plan_experiment(paper_fp, DATASET_JSON, preset="tiny", overrides=["training.cpu.screening.epochs=1"]).to_dict()
    assert p["training"]["cpu"]["screening"]["epochs"] == 1 and p["overrides"] == ["training.cpu.screening.epochs=1"]


@pytest.mark.parametrize("override, message", [
    ("inference.no_such_key=1", "inference.no_such_key"),
    ("screening.blok_size=[20,20,16]", "screening.blok_size"),
    ("inference.screening_threshold=[0.1,", "inference.screening_threshold"),
    ("inference.screening_threshold=high", "inference.screening_threshold"),
    ("screening.block_size=[21,20,16]", "cannot be mapped"),
    ("screening.block_size=[12,20,16]", "cannot be mapped"),
    ("screening.network.last_kernel=[3,3,3]", "screening.network.last_kernel"),
    ("num_input_channels=2", "num_input_channels"),
    ("segmentation.patch_size=[30,32,24]", "multiple of 8"),
    ("screening.network.features=[8,8]", "5 entries"),
    ("no_equals_sign", "dotted.key=VALUE"),
    ("screening.block_size.7=20", "not an index"),
])
def test_override_errors(auto_plans, override, message):
    with pytest.raises(CMBUNetError, match=message.replace("[", r"\[").replace(".", r"\.")):
        apply_overrides(auto_plans, [override])


# --------------------------------------------------------------------------------------- I/O and hash
def test_save_load_roundtrip_and_hash(tmp_path, auto_plans):
    path = tmp_path / "plans.json"
    save_plans(auto_plans, path)
    loaded = load_plans(path)
    assert loaded.to_dict() == json.loads(json.dumps(auto_plans.to_dict())) and loaded == auto_plans
    assert plans_hash(loaded) == plans_hash(auto_plans)
    assert len(plans_hash(auto_plans)) == 16


def test_hash_ignores_thresholds_and_schedules(auto_plans):
    h = plans_hash(auto_plans)
    same = apply_overrides(auto_plans, ["inference.screening_threshold=0.2", "training.gpu.screening.epochs=10",
                                        "augmentation.max_rotation_deg=5", "inference.tile_size=[200,200,100]"])
    assert plans_hash(same) == h
    assert plans_hash(apply_overrides(auto_plans, ["target_spacing=[0.49,0.49,0.8]"])) == h  # same numbers
    for change in ("screening.block_size=[22,22,16]", "segmentation.network.features=[16,32,64,128]",
                   "target_spacing=[0.5,0.5,0.8]", "normalization.background_value=-1"):
        assert plans_hash(apply_overrides(auto_plans, [change])) != h, change


def test_stage_hash_is_per_stage(auto_plans):
    changed = apply_overrides(auto_plans, ["segmentation.network.features=[16,32,64,128]"])
    assert plans_hash(changed, "screening") == plans_hash(auto_plans, "screening")
    assert plans_hash(changed, "segmentation") != plans_hash(auto_plans, "segmentation")


def test_load_plans_errors(tmp_path, auto_plans):
    with pytest.raises(InputError, match="does not exist"):
        load_plans(tmp_path / "plans.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(InputError, match="bad.json.*not valid JSON"):
        load_plans(bad)
    old = tmp_path / "old.json"
    save_json(dict(auto_plans.to_dict(), plans_version=0), old)
    with pytest.raises(InputError, match="plans_version 0"):
        load_plans(old)
    edited = json.loads(json.dumps(auto_plans.to_dict()))
    edited["screening"]["network"]["last_kernel"] = [3, 3, 3]
    save_json(edited, tmp_path / "edited.json")
    with pytest.raises(InputError, match="last_kernel"):
        load_plans(tmp_path / "edited.json")


def test_schedule(auto_plans):
    assert auto_plans.schedule("screening", "cuda").epochs == 150
    assert auto_plans.schedule("screening", "cuda:1").epochs == 150
    cpu = auto_plans.schedule("screening", "cpu")
    assert cpu.epochs == 20
    with pytest.raises(dataclasses.FrozenInstanceError):
        cpu.epochs = 1  # type: ignore[misc]
    assert auto_plans.training.cpu.screening.epochs == 20
    with pytest.raises(CMBUNetError, match="unknown stage"):
        auto_plans.schedule("detection", "cpu")


@pytest.mark.parametrize("spacing", [VALDO_SPACING, [1.0, 1.0, 1.0], [0.5, 0.5, 3.0]])
def test_built_networks_match_the_planned_sizes(spacing):
    """The networks built from the plans map the screening block to 1x1x1 and classify the discrimination block."""
    torch = pytest.importorskip("torch")
    from cmbunet.networks import build_network

    sp = np.asarray(spacing)
    fp = make_fingerprint(np.ceil(np.array([[3.0, 3.0, 4.0], [6.0, 5.0, 7.0]]) / sp).astype(int), spacing=spacing)
    p = plan_experiment(fp, DATASET_JSON, preset="tiny")
    with torch.no_grad():
        scr = build_network("screening", p).eval()
        assert tuple(scr(torch.zeros(1, 1, *p.screening.block_size)).shape) == (1, 2, 1, 1, 1)
        bigger = [b + 2 * 3 for b in p.screening.block_size]  # stride 2: 3 more outputs per axis
        assert tuple(scr(torch.zeros(1, 1, *bigger)).shape) == (1, 2, 4, 4, 4)
        disc = build_network("discrimination", p).eval()
        assert tuple(disc(torch.zeros(2, 1, *p.discrimination.block_size)).shape) == (2, 2)
        seg = build_network("segmentation", p).eval()
        assert tuple(seg(torch.zeros(1, 1, *p.segmentation.patch_size)).shape) == (1, 2, *p.segmentation.patch_size)


# --------------------------------------------------------------------------------------- the typed schema
def test_typed_plans_round_trip_exactly(paper_fp, auto_plans):
    for plans in (auto_plans, plan_experiment(paper_fp, DATASET_JSON, preset="tiny", overrides=["inference.max_candidates=7"])):
        d = plans.to_dict()
        assert Plans.from_dict(d).to_dict() == d and Plans.from_dict(d) == plans
    assert auto_plans.screening.block_size == (20, 20, 16) and auto_plans.stage("segmentation").input_size == (32, 32, 24)
    assert auto_plans.inference.min_component_voxels is None and "min_component_voxels" not in auto_plans.to_dict()["inference"]


def earlier_auto_json(auto_plans: Plans) -> dict:
    """The auto plans' JSON as cmbunet wrote it before auto screening went to half width."""
    old = auto_plans.to_dict()
    old["screening"]["network"]["features"] = [64, 64, 128, 128, 256]
    return old


def test_plans_hash_is_the_hash_of_the_json(auto_plans):
    """The hash of the same JSON never changes: checkpoints and preprocessed data of earlier versions stay valid."""
    earlier = Plans.from_dict(earlier_auto_json(auto_plans))
    assert plans_hash(earlier) == "253c736bfa341db7"  # computed by cmbunet before the typed plans
    assert plans_hash(earlier, "screening") == "7b8dbc5e2e81acd2"
    assert plans_hash(auto_plans, "screening") != plans_hash(earlier, "screening")


def test_older_plans_file_gets_its_missing_keys_and_keeps_its_json_and_hash(tmp_path, auto_plans):
    """Keys added after plans_version 1 are filled in with what such a file meant, in from_dict alone."""
    old = earlier_auto_json(auto_plans)
    del old["augmentation"]["intensity"], old["augmentation"]["rotation_probability"]
    del old["segmentation"]["network"]["foreground_prior"], old["cmb_box"]["median_cmb_voxels"]
    for device in ("gpu", "cpu"):
        del old["training"][device]["screening"]["mining_cases"], old["training"][device]["screening"]["mining_keep"]
    save_json(old, tmp_path / "plans.json")
    plans = load_plans(tmp_path / "plans.json")
    assert plans.augmentation.intensity is None and plans.augmentation.rotation_probability == 0.5
    assert plans.segmentation.network.foreground_prior == 0.01 and plans.cmb_box.median_cmb_voxels is None
    assert plans.schedule("screening", "cpu").mining_cases is None and plans.schedule("screening", "cuda").mining_keep == "all"
    assert plans.to_dict() == old and len(plans.filled) == 8
    assert plans_hash(plans) == "d08ca15933f41438"  # computed by cmbunet before the typed plans
    changed = apply_overrides(plans, ["segmentation.patch_size=[40,40,32]"])  # no measured CMB size: prior kept
    assert changed.segmentation.network.foreground_prior == 0.01 and "foreground_prior" not in changed.to_dict()["segmentation"]["network"]


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["inference"].update(screening_treshold=0.2), "inference.screening_treshold is not a plans key"),
    (lambda d: d["screening"]["network"].pop("features"), "screening.network.features is missing"),
    (lambda d: d.pop("augmentation"), "augmentation is missing"),
    (lambda d: d["training"]["gpu"]["discrimination"].update(mining_epochs=[1]),
     "training.gpu.discrimination.mining_epochs is not a plans key"),
    (lambda d: d["segmentation"]["network"].update(foreground_prior=None), "segmentation.network.foreground_prior = null"),
    (lambda d: d.update(overrides="x=1"), 'overrides = "x=1": must be a list'),
])
def test_plans_errors_name_the_key(tmp_path, auto_plans, edit, message):
    d = auto_plans.to_dict()
    edit(d)
    with pytest.raises(CMBUNetError, match=message.replace("[", r"\[").replace(".", r"\.")):
        Plans.from_dict(d)
    save_json(d, tmp_path / "plans.json")
    with pytest.raises(InputError, match="plans.json: invalid plans value"):
        load_plans(tmp_path / "plans.json")
