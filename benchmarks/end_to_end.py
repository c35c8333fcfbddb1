"""One or more synthetic T2* cases through the full pipeline on the CPU, per predictor setting: the median wall
time per stage over ``--repeats`` runs, peak resident memory, achieved GFLOP/s of the screening pass against a
dense conv3d peak measured here, and the detections of each setting (F1 against the ground truth, and against
the CMBs of the float32 setting).

Cases: by default the realistic synthetic case of seed 5 (364x450x209 voxels at 0.506x0.506x0.798 mm;
298x338x150 after crop and resampling to 0.49x0.49x0.8 mm); ``--seed`` takes several, and ``--corner F`` keeps
the low corner of each holding the fraction F of each axis (0.5: about an eighth of the brain, with its edge and
the empty space around it, for shorter runs). Each case is written as NIfTI and read back, so reading is part of
the time. Every setting runs on the same cases.

Workload, without ``--model`` (random weights do not give a realistic number of candidates, so it is forced):
paper-size networks (preset ``paper``) with random weights, screening threshold 0 and ``max_candidates`` = 100,
i.e. the 100 most probable local maxima of the score map go through discrimination (x 27 shifted centres); the
15 candidates with the best discrimination probabilities are kept and segmented. F1 against the ground truth
then means nothing; F1 against the float32 setting's CMBs still says whether a faster setting changes the
detections. With ``--model FOLDER`` the trained model's plans, networks and thresholds run instead. Every stage
calls the same functions as ``CMBPredictor.predict_preprocessed``.

Each run is a fresh child process; its peak memory is its own ru_maxrss (read at exit). The output records
``lscpu``'s model name and the CPU flags that decide the fast paths (avx512_bf16, amx_bf16, ...).

    python benchmarks/end_to_end.py --settings fp32 --repeats 3 --out benchmarks/results/end_to_end.json
    python benchmarks/end_to_end.py --settings fp32 fp32-skip bf16 bf16-skip --corner 0.5 --candidates 30 --kept 5 ...
    python benchmarks/end_to_end.py --quick
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

T160 = [160, 160, 80]
SETTINGS = {
    # name: screening precision (bf16: screening in bf16 with the float32 recomputation near the threshold;
    # bf16-all: every stage in bf16, no recomputation), tile, discrimination batch, threads, empty-tile skipping,
    # channels-last screening
    "fp32": dict(precision="fp32", tile=T160, batch=256, threads=2, skip=False, cl=False),
    "fp32-cl": dict(precision="fp32", tile=T160, batch=256, threads=2, skip=False, cl=True),
    "fp32-skip": dict(precision="fp32", tile=T160, batch=256, threads=2, skip=True, cl=True),
    "bf16": dict(precision="bf16", tile=T160, batch=256, threads=2, skip=False, cl=True),
    "bf16-skip": dict(precision="bf16", tile=T160, batch=256, threads=2, skip=True, cl=True),
    "bf16-all-skip": dict(precision="bf16-all", tile=T160, batch=256, threads=2, skip=True, cl=True),
    "bf16-skip-tile160z": dict(precision="bf16", tile=[160, 160, 166], batch=256, threads=2, skip=True, cl=True),
    "fp32-tile224": dict(precision="fp32", tile=[224, 224, 112], batch=256, threads=2, skip=False, cl=False),
    "fp32-tile256": dict(precision="fp32", tile=[256, 256, 128], batch=256, threads=2, skip=False, cl=False),
    "fp32-batch64": dict(precision="fp32", tile=T160, batch=64, threads=2, skip=False, cl=False),
    "fp32-1thread": dict(precision="fp32", tile=T160, batch=256, threads=1, skip=False, cl=False),
}
STAGE_KEYS = ["read", "preprocess", "screening", "refine", "candidates", "discrimination", "segmentation", "export",
              "write"]


def _predictor(args: dict):
    """The predictor of one setting: the trained model of ``--model`` with its own thresholds, or paper-size
    networks with random (seeded) weights for the forced workload."""
    from cmbunet.inference.options import REDUCED_PRECISION_STAGES, SCREENING_MARGIN, InferenceOptions
    from cmbunet.inference.predictor import CMBPredictor, resolve_settings
    from cmbunet.plans.schema import STAGES

    bf16_all = args["precision"] == "bf16-all"
    options = InferenceOptions(
        "cpu", "bf16" if args["precision"].startswith("bf16") else "fp32",
        reduced_precision_stages=STAGES if bf16_all else REDUCED_PRECISION_STAGES,
        channels_last_stages=("screening",) if args["cl"] else (), discrimination_batch_size=args["batch"],
        segmentation_batch_size=max(1, args["batch"] // 8), skip_empty=args["skip"],
        screening_margin=None if bf16_all else SCREENING_MARGIN)
    if args.get("model"):
        return CMBPredictor.from_model_folder(args["model"], settings_overrides={"tile_size": args["tile"]},
                                              options=options)
    plans = C.make_plans(args.get("preset") or "paper", overrides=args.get("overrides") or None)
    nets = C.build_networks(plans)
    settings = resolve_settings(plans, None, {"tile_size": args["tile"], "screening_threshold": 0.0,
                                              "max_candidates": args["candidates"]})
    return CMBPredictor(plans, {k: [v] for k, v in nets.items()}, options, settings=settings)


def _run_case(pred, image: str, outdir: Path, args: dict, t: dict[str, float]) -> dict:
    """One case through every stage, adding the seconds per stage to ``t``; writes ``outdir/check.npz``."""
    from cmbunet.inference.candidates import find_candidates
    from cmbunet.inference.discrimination import discriminate_candidates
    from cmbunet.inference.input_cases import find_input_cases
    from cmbunet.inference.outputs import CaseOutputs, CasePrediction, cmb_table, drop_small_components, write_case
    from cmbunet.inference.segmentation import segment_candidates
    from cmbunet.inference.decision import kept_candidates, measure_candidates
    from cmbunet.preprocessing.preprocessor import export_segmentation, native_geometry

    forced, plans, settings = not args.get("model"), pred.plans, pred.settings
    data, properties, props, tr = pred.load_and_preprocess([image], "case")
    for k, v in tr.items():
        t[k] += v
    clock = time.perf_counter()
    score_map = pred.screening_pass(data)
    t["screening"] += time.perf_counter() - clock
    clock = time.perf_counter()
    centres, scores = find_candidates(score_map, plans, settings.screening_threshold, settings.nms_size_vox,
                                      settings.max_candidates)
    # forced workload of the float32 recomputation: the neighbourhoods of the forced candidates, i.e. every score
    # within the margin of the weakest forced candidate (a trained model's threshold plays that role)
    if not forced or len(scores):
        score_map = pred.refine_screening(data, score_map, threshold=float(scores[-1]) if forced else None)
    t["refine"] += time.perf_counter() - clock
    clock = time.perf_counter()
    centres, scores = find_candidates(score_map, plans, settings.screening_threshold, settings.nms_size_vox,
                                      settings.max_candidates)
    t["candidates"] += time.perf_counter() - clock
    stats = dict(pred.last_screening_stats)
    clock = time.perf_counter()
    disc, moved = discriminate_candidates(pred.networks["discrimination"], data, centres, plans,
                                          pred.options.forward("discrimination"), settings.discrimination_shift_vox,
                                          settings.discrimination_aggregate, settings.discrimination_mirror)
    if forced:  # the top-K rule in place of the threshold, which means nothing for random weights
        kept = np.zeros(len(disc), dtype=bool)
        kept[np.argsort(-disc, kind="stable")[: args["kept"]]] = True
    else:  # the predictor's decision: threshold and shape rule
        measures = measure_candidates(data, moved, disc, settings, plans.channel_names, plans.target_spacing,
                                      properties["original_spacing"])
        kept = kept_candidates(disc, measures, settings)
    t["discrimination"] += time.perf_counter() - clock
    clock = time.perf_counter()
    prob_pre = segment_candidates(pred.networks["segmentation"], data, moved[kept], plans,
                                  pred.options.forward("segmentation"))
    t["segmentation"] += time.perf_counter() - clock
    clock = time.perf_counter()
    native, binary, _ = export_segmentation(prob_pre, properties, float(settings.segmentation_threshold))
    binary, native = drop_small_components(binary, native, int(settings.min_component_voxels or 0))
    cmbs = cmb_table(binary, native, native_geometry(properties), None)
    t["export"] += time.perf_counter() - clock
    clock = time.perf_counter()
    case = find_input_cases(image, plans.channel_names, ".nii.gz")[0]
    outdir.mkdir(parents=True, exist_ok=True)
    write_case(CasePrediction(probabilities=native, binary=binary, cmbs=cmbs, geometry=dict(props)),
               CaseOutputs.for_case(outdir, case, False))
    t["write"] += time.perf_counter() - clock
    flops = len(pred.networks["screening"]) * C.screening_fcn_flops(pred.networks["screening"][0], data.shape[1:],
                                                                    plans, settings.tile_size)
    np.savez_compressed(outdir / "check.npz", binary=binary, centres=centres, scores=scores, kept=moved[kept],
                        disc=disc, seg=prob_pre.astype(np.float32), score_map=score_map.astype(np.float32))
    return {"shape_preprocessed": list(data.shape[1:]), "num_candidates": int(len(centres)),
            "num_kept": int(kept.sum()), "num_cmbs": int(len(cmbs)), "screening_gflop": flops / 1e9,
            "screening_stats": stats}


def child(args: dict) -> None:
    torch.set_num_threads(int(args["threads"]))
    pred = _predictor(args)
    t = dict.fromkeys(STAGE_KEYS, 0.0)
    with torch.inference_mode():
        cases = [_run_case(pred, c["image"], Path(args["outdir"]) / c["name"], args, t) for c in args["cases"]]
    stats = {k: sum(c["screening_stats"].get(k, 0) for c in cases) for k in cases[0]["screening_stats"]}
    C.child_result({"timings": t, "total": float(sum(t.values())), "cases": cases, "screening_stats": stats,
                    "shape_preprocessed": cases[0]["shape_preprocessed"],
                    "num_candidates": sum(c["num_candidates"] for c in cases),
                    "num_kept": sum(c["num_kept"] for c in cases), "num_cmbs": sum(c["num_cmbs"] for c in cases),
                    "screening_gflop": sum(c["screening_gflop"] for c in cases), "threads": torch.get_num_threads(),
                    "precision_line": pred.precision_line()})


def _detection_counts(reference: np.ndarray, binary: np.ndarray, spacing) -> dict[str, int]:
    """TP, FP and FN of ``binary`` against ``reference`` (VALDO's CMB matching), for a pooled F1."""
    from cmbunet.evaluation.valdo_metrics import case_metrics

    m = case_metrics(reference, binary, tuple(float(s) for s in spacing))
    return {"tp": int(m["tp"]), "fp": int(m["fp"]), "fn": int(m["fn"])}


def pooled_f1(counts: list[dict[str, int]]) -> float:
    """F1 of the detections pooled over cases; NaN where there is nothing to detect and nothing was found."""
    tp, fp, fn = (sum(c[k] for c in counts) for k in ("tp", "fp", "fn"))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")


def compare(ref_dir: Path | None, run_dir: Path, truth: dict[str, dict]) -> dict:
    """Per case: the run against the ground truth (F1), and against the float32 reference run (equal candidates,
    kept candidates, largest probability differences, Dice and F1 of its CMBs against the reference's)."""
    out: dict = {"truth": [], "vs_fp32": []}
    checks = []
    for name, ref in truth.items():
        b = np.load(run_dir / name / "check.npz")
        out["truth"].append(_detection_counts(ref["label"], b["binary"], ref["spacing"]))
        if ref_dir is None:
            continue
        a = np.load(ref_dir / name / "check.npz")
        out["vs_fp32"].append(_detection_counts(a["binary"], b["binary"], ref["spacing"]))
        same = lambda k: a[k].shape == b[k].shape and bool((a[k] == b[k]).all())  # noqa: E731
        diff = lambda k: float(np.abs(a[k] - b[k]).max()) if a[k].shape == b[k].shape and a[k].size else float("nan")  # noqa: E731
        inter, denom = float(np.logical_and(a["binary"], b["binary"]).sum()), float(a["binary"].sum() + b["binary"].sum())
        checks.append({"same_candidates": same("centres"), "same_kept": same("kept"),
                       "dice_vs_fp32": 2 * inter / denom if denom else 1.0, "max_score_diff": diff("score_map"),
                       "max_cand_score_diff": diff("scores"), "max_disc_diff": diff("disc"), "max_seg_prob_diff": diff("seg")})
    out["f1_truth"] = pooled_f1(out["truth"])
    if checks:
        out["f1_vs_fp32"] = pooled_f1(out["vs_fp32"])
        out["same_candidates"] = all(c["same_candidates"] for c in checks)
        out["same_kept"] = all(c["same_kept"] for c in checks)
        out["dice_vs_fp32"] = min(c["dice_vs_fp32"] for c in checks)
        for k in ("max_score_diff", "max_cand_score_diff", "max_disc_diff", "max_seg_prob_diff"):
            out[k] = max(c[k] for c in checks)
        out["per_case"] = checks
    return out


def corner(case, fraction: float):
    """The low corner of ``case`` holding ``fraction`` of each axis (image and label; the origin stays)."""
    from types import SimpleNamespace

    if fraction >= 1:
        return case
    sl = tuple(slice(0, max(1, int(round(fraction * n)))) for n in case.label.shape)
    images = {k: np.ascontiguousarray(v[sl]) for k, v in case.images.items()}
    return SimpleNamespace(images=images, label=np.ascontiguousarray(case.label[sl]),
                           props=dict(case.props, shape=list(case.label[sl].shape)))


def write_cases(a, work: Path) -> tuple[list[dict], dict[str, dict], str]:
    """Synthesize and write the benchmark's cases: their images, ground truth, and a line describing them."""
    from cmbunet.synthetic.generator import synthesize_case

    cases, truth = [], {}
    for seed in a.seed[:1] if a.quick else a.seed:
        if a.quick:  # 1 x 1 x 2.4 mm: a centre crop keeps the resampled volume small
            from types import SimpleNamespace

            small = synthesize_case(1, size="small")
            sl = (slice(16, 40), slice(20, 44), slice(10, 20))
            case = SimpleNamespace(images={"T2S": np.ascontiguousarray(small.images["T2S"][sl])}, label=small.label[sl],
                                   props=dict(small.props, shape=list(small.label[sl].shape)))
        else:
            case = corner(synthesize_case(seed, size=a.size), a.corner)
        name = f"case{seed}"
        image = C.write_case_image(case, work / "input", name)
        cases.append({"name": name, "image": str(image)})
        truth[name] = {"label": case.label, "spacing": case.props["spacing"], "shape": list(case.props["shape"])}
    what = "small synthetic crop (--quick)" if a.quick else f"{a.size} synthetic, seeds {' '.join(map(str, a.seed))}"
    if a.corner < 1 and not a.quick:
        what += f", low corner of {a.corner:g} of each axis"
    shapes = "; ".join(f"{t['shape']}" for t in truth.values())
    return cases, truth, f"{what}: {shapes} voxels at {[round(float(x), 3) for x in next(iter(truth.values()))['spacing']]} mm"


def summary_row(name: str, results: list[dict], peaks: dict, gpeak: str) -> dict:
    """The median seconds per stage over the repeats of one setting, its memory, speed and detections."""
    cfg = SETTINGS[name]
    med = {k: statistics.median(r["timings"][k] for r in results) for k in STAGE_KEYS}
    total = statistics.median(r["total"] for r in results)
    gflop, stats = results[0]["screening_gflop"], results[0]["screening_stats"]
    check = [r["check"] for r in results]
    return {"setting": name, "tile": cfg["tile"], "batch": cfg["batch"], "threads": cfg["threads"],
            "skip": cfg["skip"], "channels-last": cfg["cl"],
            "read+preprocess s": med["read"] + med["preprocess"], "screening s": med["screening"],
            "fp32 recompute s": med["refine"], "candidates s": med["candidates"],
            "discrimination s": med["discrimination"], "segmentation s": med["segmentation"],
            "export+write s": med["export"] + med["write"], "total s": total,
            "total min-max s": [min(r["total"] for r in results), max(r["total"] for r in results)],
            "peak RSS GB": max(r["maxrss_mb"] for r in results) / 1024,
            "positions computed %": 100 * stats["positions_computed"] / stats["positions"],
            "positions recomputed %": 100 * stats.get("positions_refined", 0) / stats["positions"],
            "screening GFLOP/s": gflop / med["screening"],
            "% of conv peak": 100 * gflop / med["screening"] / peaks[gpeak]["gflops"],
            "F1 (truth)": check[0]["f1_truth"], "CMBs found": results[0]["num_cmbs"],
            "F1 vs fp32 CMBs": check[0].get("f1_vs_fp32", float("nan")),
            "same candidates+kept as fp32": all(c.get("same_candidates", False) and c.get("same_kept", False)
                                                for c in check),
            "max |dp| of candidates vs fp32": max(max(c.get(k, float("nan")) for k in
                                                      ("max_cand_score_diff", "max_disc_diff", "max_seg_prob_diff"))
                                                  for c in check),
            "max |dp| of map vs fp32": max(c.get("max_score_diff", float("nan")) for c in check),
            "runs": len(results), "load": results[-1]["load_start"]}


def main() -> None:
    p = C.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--settings", nargs="+", default=["fp32"], choices=list(SETTINGS))
    p.add_argument("--candidates", type=int, default=100, help="forced number of screening candidates")
    p.add_argument("--kept", type=int, default=15, help="candidates kept for segmentation (best discrimination)")
    p.add_argument("--seed", type=int, nargs="+", default=[C.REALISTIC_SEED],
                   help="synthetic cases, one per seed; every setting runs on the same cases")
    p.add_argument("--size", choices=["realistic", "small"], default="realistic", help="size of the synthetic cases")
    p.add_argument("--corner", type=float, default=1.0,
                   help="keep the low corner of each case holding this fraction of each axis (0.5: about an eighth "
                        "of the brain, with its edge and the empty space around it; 1: the whole case)")
    p.add_argument("--model", default=None,
                   help="a trained model folder: its plans, networks and thresholds instead of paper-size networks "
                        "with random weights and the forced workload (then F1 against the truth means something)")
    p.add_argument("--preset", default="paper", choices=("paper", "auto"),
                   help="networks of the forced workload (random weights): paper (Chen & Dou's sizes) or auto (the "
                        "default plan's, half-width screening), both at Chen & Dou's 20x20x16 block of VALDO spacing")
    p.add_argument("--override", nargs="+", default=[], help="plan overrides of the forced workload's networks")
    p.add_argument("--child", help=__import__("argparse").SUPPRESS)
    p.add_argument("--timeout", type=float, default=580, help="seconds per child run")
    p.add_argument("--workdir", default=None, help="keep the cases and outputs here (default: a temporary folder)")
    a = p.parse_args()
    if a.child:
        child(json.loads(a.child))
        return

    info = C.machine_info()
    C.print_machine(info)
    repeats = 1 if a.quick else a.repeats
    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="cmbunet_bench_e2e_"))
    if a.quick:
        a.candidates, a.kept = min(a.candidates, 20), min(a.kept, 5)
    cases, truth, what = write_cases(a, work)
    workload = (f"model {a.model} with its own thresholds" if a.model else
                f"{a.preset} networks {a.override or ''}, random weights; {a.candidates} candidates forced, "
                f"{a.kept} kept")
    print(f"# cases: {what}; {workload}; {repeats} run(s) per setting; load {C.loadavg()}")

    peaks = {"fp32": C.conv_peak("fp32", repeats=1 if a.quick else 3)}
    if any(SETTINGS[s]["precision"] != "fp32" for s in a.settings):
        peaks["bf16"] = C.conv_peak("bf16", repeats=1)
    for k, v in peaks.items():
        print(f"# dense conv3d 64->64 5x5x3 {k} peak: {v['gflops']:.1f} GFLOP/s (input {v['shape']}, load {v['load']})")

    rows, runs = [], {}
    ref_dir = None
    for name in a.settings:
        cfg = SETTINGS[name]
        bf16, threads = cfg["precision"] != "fp32", cfg["threads"]
        if bf16 and peaks["bf16"]["gflops"] < 0.5 * peaks["fp32"]["gflops"]:
            print(f"# {name}: skipped, the bf16 conv peak ({peaks['bf16']['gflops']:.2f} GFLOP/s) is far below fp32 "
                  f"({peaks['fp32']['gflops']:.0f}) on this CPU (no bfloat16 instructions)")
            rows.append({"setting": name, "total s": float("nan"), "note": "skipped: bf16 conv peak "
                         f"{peaks['bf16']['gflops']:.2f} GFLOP/s vs fp32 {peaks['fp32']['gflops']:.0f}"})
            continue
        results = []
        for r in range(repeats):
            outdir = work / f"out_{name}_{r}"
            args = {"cases": cases, "outdir": str(outdir), **cfg, "candidates": a.candidates, "kept": a.kept,
                    "model": str(Path(a.model).resolve()) if a.model else None, "preset": a.preset,
                    "overrides": a.override}
            load0 = C.loadavg()
            try:
                res = C.run_child(Path(__file__), [json.dumps(args)], timeout=a.timeout, threads=threads)
            except Exception as e:  # noqa: BLE001 - a timed-out setting is a result too
                print(f"# {name} run {r}: {type(e).__name__}: {str(e)[:300]}")
                continue
            res["load_start"] = load0
            if ref_dir is None and not bf16 and not cfg["skip"]:
                ref_dir = outdir
            res["check"] = compare(ref_dir, outdir, truth)
            results.append(res)
            print(f"# {name} run {r}: total {res['total']:.1f} s, peak RSS {res['maxrss_mb']:.0f} MB, "
                  f"F1 (truth) {res['check']['f1_truth']:.3f}, load {load0} -> {res['load_end']}", flush=True)
        runs[name] = results
        if not results:
            rows.append({"setting": name, "total s": float("nan"), "note": f"no run finished within {a.timeout} s"})
            continue
        rows.append(summary_row(name, results, peaks, "bf16" if bf16 else "fp32"))

    # the load of a shared machine changes during the runs: measure the peak again and keep the better one
    for k in list(peaks):
        again = C.conv_peak(k, repeats=1 if a.quick else 3)
        print(f"# dense conv3d {k} peak after the runs: {again['gflops']:.1f} GFLOP/s (load {again['load']})")
        peaks[k + "_after"] = again
        if again["gflops"] > peaks[k]["gflops"]:
            peaks[k] = {**again, "before": peaks[k]}
    for row in rows:
        if "screening GFLOP/s" in row:
            row["% of conv peak"] = 100 * row["screening GFLOP/s"] / peaks["fp32" if SETTINGS[row["setting"]]["precision"] == "fp32" else "bf16"]["gflops"]

    print()
    C.print_table(rows)
    first = next((r for r in runs.values() if r), None)
    if first:
        r0 = first[0]
        print(f"\npreprocessed shape {r0['shape_preprocessed']} (first case), {r0['num_candidates']} candidates, "
              f"{r0['num_kept']} segmented, screening {r0['screening_gflop']:.0f} GFLOP (tiled pass, from layer shapes)")
    print(f"# {info['lscpu']['line']}")
    print("goals (CPU): whole case <= 90 s fp32; <= 45 s fastest setting with equal F1; peak memory <= 6 GB; "
          "screening >= 60% of the conv peak")
    C.write_json(a.out, {"script": "end_to_end", "machine": info, "argv": sys.argv, "peaks": peaks, "rows": rows,
                         "runs": runs, "cases": what, "candidates": a.candidates, "kept": a.kept,
                         "model": a.model, "repeats": repeats})


if __name__ == "__main__":
    main()
