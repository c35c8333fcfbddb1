"""Helpers of ``gpu_check.sh``: the device summary, and the comparison of two prediction folders (per-stage times
from ``summary.csv``, equality of the detections from ``CASE_cmbs.csv`` and the binary maps).

    python benchmarks/gpu_check.py devices
    python benchmarks/gpu_check.py compare PRED_A PRED_B --names gpu cpu
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

STAGE_COLUMNS = ["seconds_read", "seconds_preprocess", "seconds_screening", "seconds_discrimination",
                 "seconds_segmentation", "seconds_export", "seconds_write", "seconds_total"]


def devices() -> int:
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}, GPUs: {n}")
    for i in range(n):
        p = torch.cuda.get_device_properties(i)
        print(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.1f} GiB, compute capability {p.major}.{p.minor}")
    return 0


def stage_times(folder: Path) -> pd.Series:
    summary = pd.read_csv(folder / "summary.csv")
    ok = summary[summary["status"] == "ok"]
    return ok[[c for c in STAGE_COLUMNS if c in ok]].median()


def compare(a: Path, b: Path, names: tuple[str, str]) -> int:
    """Per-stage median seconds of both runs, and whether they found the same CMBs; exit 1 when they differ."""
    times = pd.DataFrame({names[0]: stage_times(a), names[1]: stage_times(b)})
    times["ratio"] = times[names[1]] / times[names[0]]
    print("median seconds per case and stage:")
    print(times.to_string(float_format=lambda v: f"{v:.3f}"))
    same_all = True
    for csv in sorted(a.glob("*_cmbs.csv")):
        other = b / csv.name
        ca, cb = pd.read_csv(csv), pd.read_csv(other) if other.is_file() else None
        if cb is None:
            print(f"{csv.name}: missing in {b}")
            same_all = False
            continue
        same = len(ca) == len(cb) and np.array_equal(ca[["i", "j", "k"]].to_numpy(), cb[["i", "j", "k"]].to_numpy())
        diff = (float(np.abs(ca["discrimination_score"].to_numpy() - cb["discrimination_score"].to_numpy()).max())
                if same and len(ca) else 0.0)
        vox = (ca["num_voxels"].to_numpy() - cb["num_voxels"].to_numpy()) if same else np.array([np.nan])
        print(f"{csv.name[:-9]}: {len(ca)} vs {len(cb)} CMBs, same positions: {same}, "
              f"max |discrimination score diff| {diff:.2e}, voxel count diff {np.abs(vox).max() if len(vox) else 0}")
        same_all &= same
    print(f"detections equal ({names[0]} vs {names[1]}): {'yes' if same_all else 'NO'}")
    return 0 if same_all else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("devices")
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    c.add_argument("--names", nargs=2, default=["a", "b"])
    args = p.parse_args()
    return devices() if args.cmd == "devices" else compare(args.a, args.b, tuple(args.names))


if __name__ == "__main__":
    sys.exit(main())
