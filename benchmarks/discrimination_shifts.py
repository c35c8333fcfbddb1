"""Discrimination of screening candidates at 27 shifted centres: every shifted block through the whole CNN
against the shared trunk (C1 and C2 once per candidate on a block grown by 2 voxels per axis, then the rest of
the network fully convolutionally over their output, once per max-pool phase). Paper-size discrimination CNN
(preset ``paper``: block 24x24x20, features 64-64-128-128, FC 512), random weights in eval mode with non-trivial
batch-norm statistics, CPU, float32.

Candidates are drawn at random inside a random brain-sized volume; the probabilities of both paths are compared
shift by shift.

    python benchmarks/discrimination_shifts.py --repeats 3 --out benchmarks/results/discrimination_shifts.json
    python benchmarks/discrimination_shifts.py --quick
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def _head_flops(net: nn.Module, grown: list[int], reach: int, shifts: np.ndarray) -> float:
    """FLOPs of ``shifted_logits`` for one candidate: the layers after C2 over the grown trunk output, once per
    max-pool phase that a shift needs, with the fully connected layers as convolutions over the C4 map."""
    rest = net.features[net.num_shared_layers :]
    trunk_out = [g - 2 * (k - 1) for g, k in zip(grown, net.features[0][0].kernel_size)]
    fc1, fc2 = net.classifier[1], net.classifier[4]
    total = 0.0
    for phase in {tuple(int(reach + v) % 2 for v in shift) for shift in shifts}:
        shape = [t - q for t, q in zip(trunk_out, phase)]
        total += C.conv_flops(rest, (1, rest[1][0].in_channels, *shape))
        c4 = [(d - q) // 2 - 4 for d, q in zip(trunk_out, phase)]
        positions = int(np.prod([c - t + 1 for c, t in zip(c4, net.trunk_size)]))
        total += 2.0 * positions * (fc1.in_features * fc1.out_features + fc2.in_features * fc2.out_features)
    return total


def main() -> None:
    p = C.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--candidates", type=int, default=50, help="screening candidates to discriminate (default 50)")
    p.add_argument("--shift", type=int, default=1, help="discrimination_shift_vox (default 1: 27 centres)")
    p.add_argument("--batch-size", type=int, default=256, help="(candidate, shift) blocks per forward pass")
    a, info, repeats = C.start(p)
    from cmbunet.inference.discrimination import PaddedVolume, shift_offsets, shifted_probabilities
    from cmbunet.utilities.autocast import ForwardOptions

    n_cand = 8 if a.quick else a.candidates
    plans = C.make_plans("paper")
    net = C.build_networks(plans)["discrimination"]
    torch.manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    net.classifier[-1].weight.mul_(1e-3)  # random weights saturate the softmax; keep it in range to compare
    block = [int(b) for b in plans.discrimination.block_size]
    rng = np.random.default_rng(0)
    shape = (160, 200, 100)
    volume = rng.normal(size=(1, *shape)).astype(np.float32)
    centres = np.column_stack([rng.integers(0, s, n_cand) for s in shape])
    shifts = shift_offsets(a.shift)
    padded = PaddedVolume.create(volume, [b // 2 + b % 2 + a.shift for b in block])
    forward = ForwardOptions(batch_size=a.batch_size)
    load_start = C.loadavg()

    def run(share: bool) -> np.ndarray:
        return shifted_probabilities([net], padded, centres, shifts, block, forward, share_trunk=share)

    t_plain, plain_times, plain = C.median_time(lambda: run(False), repeats)
    t_shared, shared_times, shared = C.median_time(lambda: run(True), repeats)
    block_flops = C.conv_flops(net, (1, 1, *block))
    grown = [b + 2 * a.shift for b in block]
    trunk_flops = C.conv_flops(net.features[: net.num_shared_layers], (1, 1, *grown))
    n_blocks = n_cand * len(shifts)
    flops_plain = n_blocks * block_flops
    flops_shared = n_cand * (trunk_flops + _head_flops(net, grown, a.shift, shifts))
    rows = [
        {"method": f"every shifted block (batch {a.batch_size})", "candidates": n_cand, "shifts": len(shifts),
         "seconds (median)": t_plain, "candidates/s": n_cand / t_plain, "GFLOP": flops_plain / 1e9,
         "GFLOP/s": flops_plain / t_plain / 1e9},
        {"method": "shared C1-C2 trunk, head per pooling phase", "candidates": n_cand, "shifts": len(shifts), "seconds (median)": t_shared,
         "candidates/s": n_cand / t_shared, "GFLOP": flops_shared / 1e9, "GFLOP/s": flops_shared / t_shared / 1e9},
    ]
    C.print_table(rows)
    diff = float(np.abs(plain - shared).max())
    unsaturated = float(np.mean((plain > 1e-4) & (plain < 1 - 1e-4)))
    load_end = C.loadavg()
    print(f"\nspeed-up of the shared trunk: {t_plain / t_shared:.1f}x ({flops_plain / flops_shared:.1f}x fewer FLOPs)")
    print(f"max |shared - every block| over {plain.size} probabilities: {diff:.2e} "
          f"({unsaturated:.0%} of them strictly between 1e-4 and 1 - 1e-4)")
    print(f"# load average: start {load_start}, end {load_end}; times plain {['%.2f' % t for t in plain_times]}, "
          f"shared {['%.2f' % t for t in shared_times]}")
    C.write_json(a.out, {"script": "discrimination_shifts", "machine": info, "argv": sys.argv, "repeats": repeats,
                         "load_start": load_start, "load_end": load_end, "rows": rows, "max_abs_diff": diff,
                         "unsaturated_fraction": unsaturated,
                         "speedup": t_plain / t_shared, "flop_ratio": flops_plain / flops_shared,
                         "plain_times": plain_times, "shared_times": shared_times})


if __name__ == "__main__":
    with torch.inference_mode():
        main()
