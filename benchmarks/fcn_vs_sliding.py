"""Screening score map of a brain-sized volume: one fully convolutional (FCN) pass against the explicit sliding
window (every block position at stride 2 classified separately), paper-size screening network (preset
``paper``: block 20x20x16, features 64-64-128-128-256), random weights in eval mode, CPU, float32.

The FCN runs over the whole preprocessed realistic synthetic case (seed 5, 0.49x0.49x0.8 mm). The sliding
window over the whole volume would take hours, so it runs over a centre crop and its time for the whole volume is
extrapolated from its blocks per second (the whole volume has one block per score voxel). Equality is checked
twice: (1) sliding window of the crop == FCN of the same crop (every position), (2) sliding window of the crop
== the whole-volume FCN map at the same block centres, for every block lying entirely inside the crop.

    python benchmarks/fcn_vs_sliding.py --repeats 3 --out benchmarks/results/fcn_vs_sliding.json
    python benchmarks/fcn_vs_sliding.py --quick
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def preprocessed_realistic(plans, seed: int) -> np.ndarray:
    from cmbunet.preprocessing.preprocessor import preprocess_case

    case = C.realistic_case(seed)
    data, _, _, _ = preprocess_case(case.images["T2S"][None], case.props, plans)
    return data


def main() -> None:
    p = C.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=C.REALISTIC_SEED)
    p.add_argument("--crop", type=int, nargs=3, default=[32, 32, 24], help="sliding-window crop (voxels)")
    p.add_argument("--batch-size", type=int, default=256, help="blocks per forward pass of the sliding window")
    a, info, repeats = C.start(p)
    from cmbunet.inference.screening import score_map_shape, screening_score_map
    from cmbunet.utilities.autocast import ForwardOptions

    plans = C.make_plans("paper")
    net = C.build_networks(plans)["screening"]
    load_start = C.loadavg()

    if a.quick:
        rng = np.random.default_rng(0)
        volume = rng.normal(size=(1, 64, 64, 48)).astype(np.float32)
        crop_shape = [22, 22, 18]
        source = "random 64x64x48 volume (--quick)"
    else:
        volume = preprocessed_realistic(plans, a.seed)
        crop_shape = a.crop
        source = f"realistic synthetic case seed {a.seed}, preprocessed to 0.49x0.49x0.8 mm"
    vshape = list(volume.shape[1:])
    # crop at an even offset so crop score voxel j is whole-volume score voxel off/2 + j
    off = [((n - min(c, n)) // 2) // 2 * 2 for n, c in zip(vshape, crop_shape)]
    crop = np.ascontiguousarray(volume[:, off[0]:off[0] + crop_shape[0], off[1]:off[1] + crop_shape[1],
                                       off[2]:off[2] + crop_shape[2]])
    print(f"# volume {vshape} ({source}); sliding-window crop {list(crop.shape[1:])} at offset {off}; load {load_start}")

    fcn_flops = C.screening_fcn_flops(net, vshape, plans)
    t_fcn, fcn_times, fcn_map = C.median_time(lambda: screening_score_map(net, volume, plans, mode="fcn"), repeats)
    n_blocks_volume = int(np.prod(score_map_shape(vshape, plans)))

    crop_fcn = screening_score_map(net, crop, plans, mode="fcn")
    sliding = ForwardOptions(batch_size=a.batch_size)
    t_sl, sl_times, sl_map = C.median_time(lambda: screening_score_map(net, crop, plans, sliding, mode="sliding"),
                                           repeats)
    n_blocks_crop = int(sl_map.size)
    blocks_per_s = n_blocks_crop / t_sl
    t_sl_volume = n_blocks_volume / blocks_per_s
    diff_crop = float(np.abs(sl_map - crop_fcn).max())

    # positions whose block lies entirely inside the crop: same input as the whole-volume pass
    block = np.asarray(plans.screening.block_size)
    half = block // 2
    inside = [np.arange(n) for n in sl_map.shape]
    inside = [j[(2 * j - h >= 0) & (2 * j - h + b <= c)] for j, h, b, c in zip(inside, half, block, crop.shape[1:])]
    sub_sl = sl_map[np.ix_(*inside)]
    sub_full = fcn_map[np.ix_(*[j + o // 2 for j, o in zip(inside, off)])]
    diff_overlap = float(np.abs(sub_sl - sub_full).max()) if sub_sl.size else float("nan")
    load_end = C.loadavg()

    block_flops = C.conv_flops(net, (1, 1, *block.tolist()))
    rows = [
        {"method": "FCN, whole volume (tiles 160x160x80)", "volume": vshape, "blocks": n_blocks_volume,
         "seconds (median)": t_fcn, "blocks/s": n_blocks_volume / t_fcn, "GFLOP": fcn_flops / 1e9,
         "GFLOP/s": fcn_flops / t_fcn / 1e9},
        {"method": f"sliding window, crop (batch {a.batch_size})", "volume": list(crop.shape[1:]),
         "blocks": n_blocks_crop, "seconds (median)": t_sl, "blocks/s": blocks_per_s,
         "GFLOP": n_blocks_crop * block_flops / 1e9, "GFLOP/s": n_blocks_crop * block_flops / t_sl / 1e9},
        {"method": "sliding window, whole volume (extrapolated)", "volume": vshape, "blocks": n_blocks_volume,
         "seconds (median)": t_sl_volume, "blocks/s": blocks_per_s, "GFLOP": n_blocks_volume * block_flops / 1e9,
         "GFLOP/s": n_blocks_volume * block_flops / t_sl_volume / 1e9},
    ]
    C.print_table(rows)
    ratio = t_sl_volume / t_fcn
    print(f"\nspeed-up FCN vs sliding window (whole volume): {ratio:.0f}x (goal >= 100x)")
    print(f"max |sliding - FCN| on the crop (all {n_blocks_crop} positions, same padded input): {diff_crop:.2e}")
    print(f"max |sliding(crop) - FCN(whole volume)| on the {sub_sl.size} blocks inside the crop: {diff_overlap:.2e}")
    print(f"# load average: start {load_start}, end {load_end}; FCN times {['%.2f' % t for t in fcn_times]}, "
          f"sliding times {['%.2f' % t for t in sl_times]}")
    C.write_json(a.out, {"script": "fcn_vs_sliding", "machine": info, "argv": sys.argv, "source": source,
                         "load_start": load_start, "load_end": load_end, "repeats": repeats, "rows": rows,
                         "ratio": ratio, "max_abs_diff_crop": diff_crop, "max_abs_diff_overlap": diff_overlap,
                         "overlap_blocks": int(sub_sl.size), "fcn_times": fcn_times, "sliding_times": sl_times,
                         "block_gflop": block_flops / 1e9})


if __name__ == "__main__":
    with torch.inference_mode():
        main()
