"""Screening and end-to-end time against volume size: does the time grow linearly with the number of voxels?

Volumes are centre crops (inside the brain) of the realistic synthetic case (seed 5, 0.506x0.506x0.798 mm),
paper-size networks with random weights, fp32, default tile 160x160x80.

- screening: ``screening_score_map`` (FCN) on the preprocessed crop, median of ``--repeats``;
- end to end: the crop written as NIfTI and run through ``benchmarks/end_to_end.py``'s child (read, preprocess,
  screening, candidates, discrimination, segmentation, export, write) in a fresh process, with a fixed workload of
  20 candidates and 5 segmented, so that only the size-dependent stages change; 'size-dependent s' is the
  end-to-end time minus discrimination and segmentation (read, preprocess, screening, candidates, export, write).

    python benchmarks/scaling.py --repeats 3 --out benchmarks/results/scaling.json
    python benchmarks/scaling.py --quick
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def main() -> None:
    p = C.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["64x64x48", "96x96x64", "128x128x96", "176x176x112"],
                   help="native crop sizes XxYxZ")
    p.add_argument("--no-end-to-end", action="store_true", help="screening only")
    p.add_argument("--seed", type=int, default=C.REALISTIC_SEED)
    p.add_argument("--candidates", type=int, default=20, help="fixed number of candidates of the end-to-end runs")
    p.add_argument("--kept", type=int, default=5, help="fixed number of segmented candidates")
    a, info, repeats = C.start(p)
    from cmbunet.inference.screening import screening_score_map
    from cmbunet.preprocessing.preprocessor import preprocess_case

    if a.quick:
        a.candidates, a.kept = 4, 1
    sizes = [[int(v) for v in s.split("x")] for s in (["24x24x16", "32x32x24"] if a.quick else a.sizes)]
    plans = C.make_plans("paper")
    net = C.build_networks(plans)["screening"]
    case = C.realistic_case(a.seed)
    img = case.images["T2S"]
    brain_idx = np.argwhere(case.brain)
    centre = ((brain_idx.min(0) + brain_idx.max(0)) // 2).astype(int)
    work = Path(tempfile.mkdtemp(prefix="cmbunet_bench_scaling_"))
    load_start = C.loadavg()
    print(f"# load {load_start}")
    rows = []
    for size in sizes:
        lo = [max(0, min(c - s // 2, n - s)) for c, s, n in zip(centre, size, img.shape)]
        sl = tuple(slice(l, l + s) for l, s in zip(lo, size))
        crop = np.ascontiguousarray(img[sl])
        crop = np.where(crop == 0, np.float32(1e-3), crop)  # keep the crop box whole (no zero border to crop away)
        props = dict(case.props, shape=[int(v) for v in crop.shape])
        data, _, _, _ = preprocess_case(crop[None], props, plans)
        n_vox = int(np.prod(data.shape[1:]))
        t_scr, times, _ = C.median_time(lambda: screening_score_map(net, data, plans), repeats, warmup=0)
        row = {"native crop": list(crop.shape), "preprocessed": list(data.shape[1:]), "voxels (M)": n_vox / 1e6,
               "screening s": t_scr, "screening us/voxel": 1e6 * t_scr / n_vox,
               "GFLOP/s": C.screening_fcn_flops(net, data.shape[1:], plans) / t_scr / 1e9}
        if not a.no_end_to_end:
            from types import SimpleNamespace

            image = C.write_case_image(SimpleNamespace(images={"T2S": crop}, props=props), work / f"in_{size[0]}", "case")
            totals, fixed = [], []
            for r in range(repeats):
                args = {"image": str(image), "outdir": str(work / f"out_{size[0]}_{r}"), "bf16": False,
                        "tile": list(plans.inference.tile_size), "batch": 256, "threads": torch.get_num_threads(),
                        "candidates": a.candidates, "kept": a.kept}
                res = C.run_child(Path(__file__).with_name("end_to_end.py"), [json.dumps(args)], timeout=580)
                totals.append(res["total"])
                fixed.append(res["timings"]["discrimination"] + res["timings"]["segmentation"])
                row["peak RSS GB"] = max(row.get("peak RSS GB", 0.0), res["maxrss_mb"] / 1024)
                row["candidates"] = res["num_candidates"]
            row["end-to-end s"] = float(np.median(totals))
            row["size-dependent s"] = float(np.median(np.subtract(totals, fixed)))
            row["size-dependent us/voxel"] = 1e6 * row["size-dependent s"] / n_vox
        row["load"] = C.loadavg()
        rows.append(row)
        print(f"# {size}: screening {t_scr:.2f} s ({times}), load {row['load']}", flush=True)
    load_end = C.loadavg()
    C.print_table(rows)
    if len(rows) >= 2:
        x = np.array([r["voxels (M)"] for r in rows])
        y = np.array([r["screening s"] for r in rows])
        slope, icpt = np.polyfit(x, y, 1)
        print(f"\nscreening: least-squares fit t = {slope:.2f} s/Mvoxel x voxels + {icpt:.2f} s")
    print(f"# load average: start {load_start}, end {load_end}")
    C.write_json(a.out, {"script": "scaling", "machine": info, "argv": sys.argv, "rows": rows, "repeats": repeats,
                         "load_start": load_start, "load_end": load_end})


if __name__ == "__main__":
    main()
