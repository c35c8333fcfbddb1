"""One whole realistic T2* case through the full pipeline on the CPU, paper-size networks (preset ``paper``),
random weights: wall time per stage, peak resident memory, achieved GFLOP/s of the screening pass against a
dense conv3d peak measured here, for several predictor settings.

Case: realistic synthetic case (seed 5, 364x450x209 voxels at 0.506x0.506x0.798 mm; 298x338x150 after crop and
resampling to 0.49x0.49x0.8 mm), written as NIfTI and read back, so reading is part of the time.

Workload (random weights do not give a realistic number of candidates, so it is forced): screening threshold 0
and ``max_candidates`` = 100, i.e. the 100 most probable local maxima of the score map go through discrimination
(x 27 shifted centres = 2700 blocks); the 15 candidates with the best discrimination probabilities are kept and
segmented. Every stage calls the same functions as ``CMBPredictor.predict_preprocessed`` (screening with the
predictor's tile size and autocast, ``find_candidates``, ``discriminate_candidates``, ``segment_candidates``,
``export_segmentation`` + ``cmb_table``, ``write_case``); only the discrimination threshold is replaced by the top-15 rule.

Each run is a fresh child process; its peak memory is its own ru_maxrss (read at exit).

    python benchmarks/end_to_end.py --settings fp32 --repeats 3 --out benchmarks/results/end_to_end.json
    python benchmarks/end_to_end.py --settings fp32 fp32-skip bf16 bf16-skip --repeats 3 --out ...
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


def child(args: dict) -> None:
    from cmbunet.inference.candidates import find_candidates
    from cmbunet.inference.discrimination import discriminate_candidates
    from cmbunet.inference.predictor import (SCREENING_MARGIN, CaseOutputs, CasePrediction, CMBPredictor, cmb_table,
                                             resolve_settings, write_case)
    from cmbunet.inference.input_cases import find_input_cases
    from cmbunet.inference.segmentation import segment_candidates
    from cmbunet.preprocessing.preprocessor import export_segmentation, native_geometry

    torch.set_num_threads(int(args["threads"]))
    plans = C.make_plans("paper")
    nets = C.build_networks(plans)
    settings = resolve_settings(plans, None, {"tile_size": args["tile"], "screening_threshold": 0.0,
                                              "max_candidates": args["candidates"]})
    all_stages = ("screening", "discrimination", "segmentation")
    pred = CMBPredictor(plans, {k: [v] for k, v in nets.items()}, "cpu", settings=settings,
                        discrimination_batch_size=args["batch"], segmentation_batch_size=max(1, args["batch"] // 8),
                        precision="bf16" if args["precision"].startswith("bf16") else "fp32",
                        bf16_stages=all_stages if args["precision"] == "bf16-all" else ("screening",),
                        screening_margin=None if args["precision"] == "bf16-all" else SCREENING_MARGIN,
                        skip_empty=args["skip"], screening_channels_last=args["cl"])
    t: dict[str, float] = {}
    with torch.inference_mode():
        data, properties, props, tr = pred.load_and_preprocess([args["image"]], "case")
        t.update(tr)
        clock = time.perf_counter()
        score_map = pred.screening_pass(data)
        t["screening"], clock = time.perf_counter() - clock, time.perf_counter()
        centres, scores = find_candidates(score_map, plans, settings.screening_threshold, settings.nms_size_vox,
                                          settings.max_candidates)
        # forced workload of the float32 recomputation: the neighbourhoods of the forced candidates, i.e. every
        # score within the margin of the weakest forced candidate (a trained model's threshold plays that role)
        if len(scores):
            score_map = pred.refine_screening(data, score_map, threshold=float(scores[-1]))
        t["refine"], clock = time.perf_counter() - clock, time.perf_counter()
        centres, scores = find_candidates(score_map, plans, settings.screening_threshold, settings.nms_size_vox,
                                          settings.max_candidates)
        t["candidates"], clock = time.perf_counter() - clock, time.perf_counter()
        stats = dict(pred.last_screening_stats)
        disc, moved = discriminate_candidates(pred.networks["discrimination"], data, centres, plans, pred.device,
                                              settings.discrimination_shift_vox, settings.discrimination_aggregate,
                                              pred.discrimination_batch_size, pred.stage_precision["discrimination"])
        kept = np.zeros(len(disc), dtype=bool)
        kept[np.argsort(-disc, kind="stable")[: args["kept"]]] = True
        t["discrimination"], clock = time.perf_counter() - clock, time.perf_counter()
        prob_pre = segment_candidates(pred.networks["segmentation"], data, moved[kept], plans, pred.device,
                                      pred.segmentation_batch_size, pred.stage_precision["segmentation"])
        t["segmentation"], clock = time.perf_counter() - clock, time.perf_counter()
        native, binary, _ = export_segmentation(prob_pre, properties, float(settings.segmentation_threshold))
        cmbs = cmb_table(binary, native, native_geometry(properties), None)
        t["export"], clock = time.perf_counter() - clock, time.perf_counter()
        case = find_input_cases(args["image"], plans.channel_names, ".nii.gz")[0]
        outputs = CaseOutputs.for_case(Path(args["outdir"]), case, False)
        Path(args["outdir"]).mkdir(parents=True, exist_ok=True)
        write_case(CasePrediction(probabilities=native, binary=binary, cmbs=cmbs, geometry=dict(props)), outputs)
        t["write"] = time.perf_counter() - clock
    flops = C.screening_fcn_flops(nets["screening"], data.shape[1:], plans, args["tile"])
    np.savez_compressed(Path(args["outdir"]) / "check.npz", binary=binary, centres=centres, scores=scores, kept=moved[kept],
                        disc=disc, seg=prob_pre.astype(np.float32), score_map=score_map.astype(np.float32))
    C.child_result({"timings": t, "total": float(sum(t.values())), "shape_preprocessed": list(data.shape[1:]),
                    "num_candidates": int(len(centres)), "num_kept": int(kept.sum()), "num_cmbs": int(len(cmbs)),
                    "screening_gflop": flops / 1e9, "threads": torch.get_num_threads(), "screening_stats": stats,
                    "precision_line": pred.precision_line()})


def compare(ref_dir: Path, run_dir: Path) -> dict:
    a, b = np.load(ref_dir / "check.npz"), np.load(run_dir / "check.npz")
    inter = float(np.logical_and(a["binary"], b["binary"]).sum())
    denom = float(a["binary"].sum() + b["binary"].sum())
    same = lambda k: a[k].shape == b[k].shape and bool((a[k] == b[k]).all())  # noqa: E731
    diff = lambda k: float(np.abs(a[k] - b[k]).max()) if a[k].shape == b[k].shape and a[k].size else float("nan")  # noqa: E731
    return {"same_candidates": same("centres"), "same_kept": same("kept"), "dice_vs_fp32": 2 * inter / denom if denom else 1.0,
            "max_score_diff": diff("score_map"), "max_cand_score_diff": diff("scores"), "max_disc_diff": diff("disc"), "max_seg_prob_diff": diff("seg")}


def main() -> None:
    p = C.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--settings", nargs="+", default=["fp32"], choices=list(SETTINGS))
    p.add_argument("--candidates", type=int, default=100, help="forced number of screening candidates")
    p.add_argument("--kept", type=int, default=15, help="candidates kept for segmentation (best discrimination)")
    p.add_argument("--seed", type=int, default=C.REALISTIC_SEED)
    p.add_argument("--child", help=__import__("argparse").SUPPRESS)
    p.add_argument("--timeout", type=float, default=580, help="seconds per child run")
    p.add_argument("--workdir", default=None, help="keep the case and outputs here (default: a temporary folder)")
    a = p.parse_args()
    if a.child:
        child(json.loads(a.child))
        return

    info = C.machine_info()
    C.print_machine(info)
    repeats = 1 if a.quick else a.repeats
    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="cmbunet_bench_e2e_"))
    if a.quick:
        from cmbunet.synthetic.generator import synthesize_case

        from types import SimpleNamespace

        small = synthesize_case(1, size="small")  # 1 x 1 x 2.4 mm: a centre crop keeps the resampled volume small
        img = np.ascontiguousarray(small.images["T2S"][16:40, 20:44, 10:20])
        case = SimpleNamespace(images={"T2S": img}, props=dict(small.props, shape=list(img.shape)))
        a.candidates, a.kept = min(a.candidates, 20), min(a.kept, 5)
    else:
        case = C.realistic_case(a.seed)
    image = C.write_case_image(case, work / "input", "case")
    print(f"# case: {'small synthetic (--quick)' if a.quick else f'realistic synthetic seed {a.seed}'}, "
          f"{case.props['shape']} voxels at {[round(s, 3) for s in case.props['spacing']]} mm; "
          f"{a.candidates} candidates forced, {a.kept} kept; load {C.loadavg()}")

    peaks = {"fp32": C.conv_peak("fp32", repeats=1 if a.quick else 3)}
    if any(SETTINGS[s]["precision"] != "fp32" for s in a.settings):
        peaks["bf16"] = C.conv_peak("bf16", repeats=1)
    for k, v in peaks.items():
        print(f"# dense conv3d 64->64 5x5x3 {k} peak: {v['gflops']:.1f} GFLOP/s (input {v['shape']}, load {v['load']})")

    rows, runs = [], {}
    ref_dir = None
    for name in a.settings:
        cfg = SETTINGS[name]
        bf16, tile, batch, threads = cfg["precision"] != "fp32", cfg["tile"], cfg["batch"], cfg["threads"]
        if bf16 and peaks["bf16"]["gflops"] < 0.5 * peaks["fp32"]["gflops"]:
            print(f"# {name}: skipped, the bf16 conv peak ({peaks['bf16']['gflops']:.2f} GFLOP/s) is far below fp32 "
                  f"({peaks['fp32']['gflops']:.0f}) on this CPU (no bfloat16 instructions)")
            rows.append({"setting": name, "total s": float("nan"), "note": "skipped: bf16 conv peak "
                         f"{peaks['bf16']['gflops']:.2f} GFLOP/s vs fp32 {peaks['fp32']['gflops']:.0f}"})
            continue
        results = []
        for r in range(repeats):
            outdir = work / f"out_{name}_{r}"
            args = {"image": str(image), "outdir": str(outdir), **cfg, "candidates": a.candidates, "kept": a.kept}
            load0 = C.loadavg()
            try:
                res = C.run_child(Path(__file__), [json.dumps(args)], timeout=a.timeout, threads=threads)
            except Exception as e:  # noqa: BLE001 - a timed-out setting is a result too
                print(f"# {name} run {r}: {type(e).__name__}: {str(e)[:300]}")
                continue
            res["load_start"] = load0
            if ref_dir is None and not bf16 and not cfg["skip"]:
                ref_dir = outdir
            res["check"] = compare(ref_dir, outdir) if ref_dir is not None else {}
            results.append(res)
            print(f"# {name} run {r}: total {res['total']:.1f} s, peak RSS {res['maxrss_mb']:.0f} MB, "
                  f"load {load0} -> {res['load_end']}", flush=True)
        runs[name] = results
        if not results:
            rows.append({"setting": name, "total s": float("nan"), "note": f"no run finished within {a.timeout} s"})
            continue
        med = {k: statistics.median(r["timings"][k] for r in results) for k in STAGE_KEYS}
        total = statistics.median(r["total"] for r in results)
        gflop = results[0]["screening_gflop"]
        row = {"setting": name, "tile": tile, "batch": batch, "threads": threads,
               "skip": cfg["skip"], "channels-last": cfg["cl"],
               "read+preprocess s": med["read"] + med["preprocess"], "screening s": med["screening"],
               "fp32 recompute s": med["refine"], "candidates s": med["candidates"], "discrimination s": med["discrimination"],
               "segmentation s": med["segmentation"], "export+write s": med["export"] + med["write"],
               "total s": total, "peak RSS GB": max(r["maxrss_mb"] for r in results) / 1024,
               "positions computed %": 100 * results[0]["screening_stats"]["positions_computed"]
               / results[0]["screening_stats"]["positions"],
               "positions recomputed %": 100 * results[0]["screening_stats"]["positions_refined"]
               / results[0]["screening_stats"]["positions"],
               "screening GFLOP/s": gflop / med["screening"],
               "% of conv peak": 100 * gflop / med["screening"] / peaks["bf16" if bf16 else "fp32"]["gflops"],
               "same candidates+kept as fp32": all(r["check"].get("same_candidates", False) and
                                                   r["check"].get("same_kept", False) for r in results),
               "max |dp| of candidates vs fp32": max(max(r["check"].get(k, float("nan")) for k in
                                           ("max_cand_score_diff", "max_disc_diff", "max_seg_prob_diff")) for r in results),
               "max |dp| of map vs fp32": max(r["check"].get("max_score_diff", float("nan")) for r in results),
               "runs": len(results), "load": results[-1]["load_start"]}
        rows.append(row)

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
        print(f"\npreprocessed shape {r0['shape_preprocessed']}, {r0['num_candidates']} candidates, "
              f"{r0['num_kept']} segmented, screening {r0['screening_gflop']:.0f} GFLOP (tiled pass, from layer shapes)")
    print("goals (CPU): whole case <= 90 s fp32; <= 45 s fastest setting with equal F1; peak memory <= 6 GB; "
          "screening >= 60% of the conv peak")
    C.write_json(a.out, {"script": "end_to_end", "machine": info, "argv": sys.argv, "peaks": peaks, "rows": rows,
                         "runs": runs, "candidates": a.candidates, "kept": a.kept, "repeats": repeats})


if __name__ == "__main__":
    main()
