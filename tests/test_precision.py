"""Fast prediction paths give the float32 result: bf16 screening (recomputed in float32 where a score can decide a
candidate) keeps the candidates and kept CMBs of float32 on a trained tiny model, and skipping the empty tiles of
the screening pass leaves the score map unchanged everywhere. Also the run-time choice of the precision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cmbunet.inference.candidates import decision_boxes, find_candidates
from cmbunet.inference.cli import build_parser, inference_options
from cmbunet.inference.options import InferenceOptions
from cmbunet.inference.predictor import CMBPredictor
from cmbunet.inference.screening import empty_block_score, score_box, score_boxes, screening_score_map
from cmbunet.networks import build_network
from cmbunet.preprocessing.preprocessor import load_preprocessed_case, preprocess_case
from cmbunet.utilities.autocast import ForwardOptions
from cmbunet.utilities.cpu_features import cpu_has_fast_bf16, resolve_precision
from plan_helpers import make_plans, paper_plans
from tiny_schedule import TINY_TRAINING_OVERRIDES

DATASET = "Dataset731_Precision"
#: A screening stage trained long enough that its scores separate CMBs from background (the tiny schedule alone
#: leaves most scores near the threshold); discrimination and segmentation keep the tiny schedule. Without the
#: intensity augmentation, which slows learning, so that 8 short epochs suffice for that.
OVERRIDES = TINY_TRAINING_OVERRIDES + ["augmentation.intensity=null",
    "training.cpu.screening.epochs=8", "training.cpu.screening.samples_per_epoch=256",
    "training.cpu.screening.batch_size=32", "training.cpu.screening.mining_epochs=[4]",
    "training.cpu.screening.mining_cases=4",
    "training.cpu.discrimination.epochs=6", "training.cpu.discrimination.samples_per_epoch=256",
    "training.cpu.discrimination.batch_size=32", "training.cpu.discrimination.lr=0.003",
]
#: Largest difference between bf16 and float32 screening probabilities allowed before the float32 recomputation
#: (measured: at most 0.02 on trained tiny and random paper-size networks; the recomputation margin is 0.05).
BF16_SCORE_TOLERANCE = 0.03


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """Ten small synthetic cases, tiny plans, all three stages trained on fold ``all`` (about 40 s)."""
    from cmbunet.plan_and_preprocess import main as plan_main
    from cmbunet.synthetic import write_dataset
    from cmbunet.training import cli as train_cli

    base = tmp_path_factory.mktemp("precision")
    raw, pre, results = base / "raw", base / "preprocessed", base / "results"
    write_dataset(raw / DATASET, 10, seed=41, size="small")
    assert plan_main(["-d", DATASET, "--preset", "tiny", "--raw-root", str(raw), "--preprocessed-root", str(pre),
                      "-np", "1", "--override", *OVERRIDES]) == 0
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the trained weights must not depend on the worker's thread count
    try:
        assert train_cli.main([DATASET, "all", "--seed", "0", "-npp", "0", "--preprocessed-root", str(pre),
                               "--results-root", str(results)]) == 0
    finally:
        torch.set_num_threads(threads)
    cases = sorted(p.stem for p in (pre / DATASET / "data").glob("*.json"))
    return {"model": results / DATASET / "cmbunet", "pre": pre / DATASET, "cases": cases}


def _cpuinfo(tmp_path: Path, name: str, flags: str) -> Path:
    path = tmp_path / name
    path.write_text(f"processor\t: 0\nmodel name\t: test CPU\nflags\t\t: {flags}\n")
    return path


# ----------------------------------------------------------------------------------------------- precision choice
def test_auto_precision_follows_the_cpu_flags(tmp_path):
    avx2 = _cpuinfo(tmp_path, "avx2", "fpu sse2 avx avx2 fma")
    avx512 = _cpuinfo(tmp_path, "avx512", "fpu avx2 avx512f avx512_bf16")
    amx = _cpuinfo(tmp_path, "amx", "fpu avx2 avx512f amx_tile amx_bf16")
    convert_only = _cpuinfo(tmp_path, "ne", "fpu avx2 avx_ne_convert")
    assert resolve_precision("auto", "cpu", avx2)[0] == "fp32"
    assert resolve_precision("auto", "cpu", convert_only)[0] == "fp32"  # conversion alone makes nothing faster
    assert resolve_precision("auto", "cpu", avx512) == ("bf16", "auto: the CPU has avx512_bf16 (bfloat16 dot products)")
    assert resolve_precision("auto", "cpu", amx)[0] == "bf16"
    assert resolve_precision("auto", "cpu", tmp_path / "missing")[0] == "fp32"
    assert resolve_precision("fp32", "cpu", avx512)[0] == "fp32"
    precision, why = resolve_precision("bf16", "cpu", avx2)
    assert precision == "bf16" and "slower" in why
    assert resolve_precision("auto", "cuda", avx2)[0] == "fp16" and resolve_precision("fp32", "cuda")[0] == "fp32"
    assert cpu_has_fast_bf16(avx512) is True and cpu_has_fast_bf16(convert_only) is False
    with pytest.raises(ValueError):
        resolve_precision("fp8")


def test_predictor_runs_bf16_in_screening_only_and_says_so(trained):
    pred = CMBPredictor.from_model_folder(trained["model"], options=InferenceOptions(precision="bf16"))
    assert pred.stage_precision == {"screening": "bf16", "discrimination": "fp32", "segmentation": "fp32"}
    assert pred.precision_line().startswith("precision: bf16 on cpu (bfloat16 requested")
    args = build_parser().parse_args(["-i", "in", "-o", "out", "-m", "model", "-device", "cpu", "--cpu-bf16"])
    legacy = CMBPredictor.from_model_folder(trained["model"], options=inference_options(args)[0])
    assert legacy.stage_precision["screening"] == "bf16"
    assert CMBPredictor.from_model_folder(trained["model"]).precision == "fp32"  # the Python API keeps float32


# ----------------------------------------------------------------------------------------------- bf16 = fp32
def test_bf16_gives_the_candidates_and_kept_cmbs_of_fp32_on_a_trained_model(trained):
    fp32 = CMBPredictor.from_model_folder(trained["model"], options=InferenceOptions(precision="fp32"))
    bf16 = CMBPredictor.from_model_folder(trained["model"], options=InferenceOptions(precision="bf16"))
    raw_bf16 = CMBPredictor.from_model_folder(trained["model"],
                                              options=InferenceOptions(precision="bf16", screening_margin=None))
    total_candidates = total_kept = 0
    raw_diffs = []
    for case in trained["cases"][:5]:
        data, _, _, props = load_preprocessed_case(trained["pre"], case)
        a, b = fp32.predict_preprocessed(data, props), bf16.predict_preprocessed(data, props)
        ca, cb = a.candidates, b.candidates
        np.testing.assert_array_equal(cb[["x", "y", "z"]].to_numpy(), ca[["x", "y", "z"]].to_numpy())
        np.testing.assert_allclose(cb["screening_score"], ca["screening_score"], atol=1e-5)
        np.testing.assert_array_equal(cb["kept"].to_numpy(), ca["kept"].to_numpy())
        np.testing.assert_allclose(cb["discrimination_score"], ca["discrimination_score"], atol=1e-6)
        np.testing.assert_array_equal(b.binary, a.binary)
        assert len(b.cmbs) == len(a.cmbs)
        total_candidates, total_kept = total_candidates + len(ca), total_kept + int(ca["kept"].sum())
        # the bf16 pass itself (before the float32 recomputation) is close to float32, but not equal to it
        raw_diffs.append(float(np.abs(raw_bf16.screening(data) - fp32.screening(data)).max()))
        assert bf16.last_screening_stats["positions_refined"] < bf16.last_screening_stats["positions"]
    assert total_candidates >= 20 and 0 < total_kept < total_candidates  # the comparison has something to compare
    assert 1e-4 < max(raw_diffs) < BF16_SCORE_TOLERANCE, raw_diffs


def test_decision_boxes_give_the_exact_candidates_of_a_perturbed_map():
    """Scores off by less than the margin, recomputed exactly inside the decision boxes: the exact candidates."""
    plans = make_plans(overrides=["inference.nms_size_vox=[6,6,4]",  # stride 2, 1000 candidates
                                  "inference.screening_threshold=0.1"])
    rng = np.random.default_rng(0)
    exact = rng.uniform(0, 0.015, (40, 36, 20)).astype(np.float32)  # background well below the threshold
    peaks = rng.integers(0, [40, 36, 20], (40, 3))
    exact[tuple(peaks.T)] = rng.uniform(0.06, 0.2, len(peaks))  # peaks around the threshold
    exact[tuple((peaks[:20] + [1, 0, 0]).clip(0, [39, 35, 19]).T)] = rng.uniform(0.06, 0.2, 20)  # close neighbours
    noisy = (exact + rng.uniform(-0.03, 0.03, exact.shape)).astype(np.float32)
    assert not np.array_equal(find_candidates(noisy, plans)[0], find_candidates(exact, plans)[0])
    boxes = decision_boxes(noisy, plans, margin=0.05)
    hybrid = noisy.copy()
    for box in boxes:
        hybrid[box] = exact[box]
    np.testing.assert_array_equal(find_candidates(hybrid, plans)[0], find_candidates(exact, plans)[0])
    assert sum(int(np.prod([s.stop - s.start for s in b])) for b in boxes) < exact.size  # not the whole map
    tight = noisy.copy()  # a margin below the error is not enough, so the test can tell
    for box in decision_boxes(noisy, plans, margin=0.0):
        tight[box] = exact[box]
    assert not np.array_equal(find_candidates(tight, plans)[0], find_candidates(exact, plans)[0])


# ----------------------------------------------------------------------------------------------- empty tiles
@pytest.fixture(scope="module")
def realistic(trained) -> tuple[np.ndarray, np.ndarray]:
    """A corner of a realistic-size synthetic brain preprocessed with the trained plans: ``(data, brain)``.

    The corner (0.4 of the cropped box per axis, 60 x 74 x 32 voxels) holds the brain's curved edge and the empty
    space around it, as the whole box does, at 1/15 of its volume: bf16 convolutions on a CPU without bfloat16
    instructions are about 10 times slower than float32, and on the whole box they took minutes."""
    from cmbunet.synthetic.generator import synthesize_case

    plans = CMBPredictor.from_model_folder(trained["model"]).plans
    case = synthesize_case(5, size="realistic")
    data, _, brain, _ = preprocess_case(case.images["T2S"][None].astype(np.float32), case.props, plans)
    corner = tuple(slice(0, int(0.4 * n)) for n in brain.shape)
    return np.ascontiguousarray(data[(slice(None), *corner)]), brain[corner]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_skipping_empty_tiles_leaves_the_score_map_unchanged_everywhere(trained, realistic, precision):
    pred = CMBPredictor.from_model_folder(trained["model"])
    net, plans = pred.networks["screening"][0], pred.plans
    data, brain = realistic
    assert (data[:, ~brain] == 0).all() and brain.mean() < 0.7  # background is exactly 0 in the cropped box
    tile = [32, 32, 24]  # small tiles, so that some, in the corner of the box, lie wholly outside the brain
    stats: dict = {}
    forward = ForwardOptions(precision=precision)
    skipped = screening_score_map(net, data, plans, forward, tile_size=tile, stats=stats)
    full = screening_score_map(net, data, plans, forward, tile_size=tile, skip_empty=False)
    assert stats["tiles_skipped"] > 0 and stats["positions_computed"] < stats["positions"], stats
    np.testing.assert_allclose(skipped, full, rtol=0, atol=1e-6 if precision == "fp32" else 1e-3)
    empty = empty_block_score(net, 1, plans.screening.block_size, forward)
    outside = np.isclose(full, empty, rtol=0, atol=1e-6)
    assert 0.02 < outside.mean() < 0.95  # the constant fills a real part of the map, and only that part
    assert (skipped == np.float32(empty)).mean() > 0.02  # filled, not computed, there


def test_score_box_equals_the_score_map_inside_the_box(trained):
    pred = CMBPredictor.from_model_folder(trained["model"])
    net, plans = pred.networks["screening"][0], pred.plans
    data, _, _, _ = load_preprocessed_case(trained["pre"], trained["cases"][1])
    full = screening_score_map(net, data, plans, tile_size=[1000, 1000, 1000], skip_empty=False)
    for box in [(slice(0, 7), slice(3, 11), slice(0, 4)), (slice(10, 15), slice(20, None), slice(5, None)),
                tuple(slice(0, n) for n in full.shape)]:
        np.testing.assert_allclose(score_box(net, data, plans, box, tile_size=[24, 24, 20]), full[box],
                                   rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------------- batched boxes
def test_batched_box_scores_equal_one_pass_per_box():
    """The float32 recomputation scores its boxes in batches: the same scores as one pass per box, in fewer passes,
    for boxes of one shape, boxes partly or wholly outside the brain, at the map's edge and larger than a tile."""
    plans = paper_plans(["screening.network.features=[4,4,8,8,8]"])  # 20x20x16 blocks, stride 2, narrow network
    torch.manual_seed(0)
    net = build_network("screening", plans).eval()
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(1, 70, 66, 40)).astype(np.float32)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in volume.shape[1:]], indexing="ij"))
    volume[:, (grid**2).sum(0) > 0.7] = 0  # a brain-like ellipsoid, zeros around it
    tile = [40, 40, 30]  # 11 x 11 x 8 block positions per tile
    boxes = [(slice(10, 13), slice(12, 15), slice(8, 11)), (slice(20, 23), slice(16, 19), slice(10, 13)),
             (slice(14, 17), slice(22, 25), slice(6, 9)), (slice(15, 19), slice(10, 15), slice(9, 12)),
             (slice(22, 26), slice(20, 25), slice(5, 8)), (slice(0, 3), slice(0, 3), slice(0, 3)),  # outside the brain
             (slice(2, 8), slice(14, 19), slice(8, 12)), (slice(30, None), slice(30, None), slice(17, None)),
             (slice(3, 17), slice(10, 14), slice(6, 10))]  # 14 positions along x: more than one tile
    calls = []
    net.register_forward_hook(lambda *_: calls.append(1))
    single = [score_box(net, volume, plans, box, tile_size=tile) for box in boxes]
    passes_single, calls[:] = len(calls), []
    batched = score_boxes(net, volume, plans, boxes, tile_size=tile)
    assert len(calls) < passes_single, (len(calls), passes_single)
    full = screening_score_map(net, volume, plans, tile_size=[1000, 1000, 1000], skip_empty=False)
    assert float(np.ptp(full)) > 1e-3  # random weights, but scores that differ
    last = score_boxes(net, volume, plans, boxes, ForwardOptions(channels_last=True), tile)  # the predictor's layout
    for box, a, b, c in zip(boxes, single, batched, last):
        assert a.shape == b.shape == c.shape == full[box].shape
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)
        np.testing.assert_allclose(b, full[box], rtol=0, atol=1e-5)
        np.testing.assert_allclose(c, a, rtol=0, atol=1e-5)
