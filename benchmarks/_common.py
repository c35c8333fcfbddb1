"""Shared helpers of the benchmark scripts: machine description, plans, FLOP counts, conv peak, tables, JSON,
and running one measurement in a child process (so that its peak resident memory is its own ru_maxrss)."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from cmbunet.utilities.autocast import autocast_context

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
#: VALDO-like target spacing (mm) of the benchmarks' plans.
VALDO_SPACING = (0.49, 0.49, 0.8)
#: Realistic synthetic case used for whole-brain numbers (0.506 x 0.506 x 0.798 mm, closest to VALDO's grid).
REALISTIC_SEED = 5


# ------------------------------------------------------------------------------------------------ machine
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    except OSError:
        pass
    return []


#: CPU flags that decide the fast arithmetic paths (bf16 dot products, AMX, AVX-512), as ``lscpu`` names them.
FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
                     "avx_ne_convert")


def lscpu() -> dict[str, Any]:
    """``lscpu``'s model name and which :data:`FLAGS_OF_INTEREST` it lists, so that a table says whether bf16
    ran on bfloat16 instructions; ``None`` fields where ``lscpu`` is missing."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, env={**os.environ, "LC_ALL": "C"}).stdout
    except (OSError, subprocess.SubprocessError):
        return {"model_name": None, "flags": None, "line": "lscpu: not available"}
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    model = fields.get("Model name", "").strip() or None
    present = set(fields.get("Flags", "").split())
    flags = {f: f in present for f in FLAGS_OF_INTEREST}
    line = (f"lscpu: Model name: {model}; flags: " + " ".join(f for f, on in flags.items() if on)
            + "; absent: " + (" ".join(f for f, on in flags.items() if not on) or "none"))
    return {"model_name": model, "flags": flags, "line": line}


def machine_info() -> dict[str, Any]:
    try:
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (GPU columns: not measured)"
    except Exception:  # noqa: BLE001
        gpu = "none"
    return {
        "nproc": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "gpu": gpu,
        "hostname": platform.node(),
        "lscpu": lscpu(),
    }


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def print_machine(info: dict[str, Any]) -> None:
    print(f"# machine: {info['nproc']} CPUs ({info['cpu_model']}; {' '.join(info['cpu_flags'])}), "
          f"torch {info['torch']} ({info['torch_threads']} threads), python {info['python']}, GPU: {info['gpu']}")
    if "lscpu" in info:
        print(f"# {info['lscpu']['line']}")


# ------------------------------------------------------------------------------------------------ plans
def make_plans(preset: str = "paper", spacing: Sequence[float] = VALDO_SPACING, overrides: list[str] | None = None):
    """Plans from a VALDO-like fingerprint (10 cases at ``spacing``, CMB extents as in VALDO)."""
    from cmbunet.plans.planner import plan_experiment

    sp = np.asarray(spacing, float)
    cases = [{"case": f"c{i:02d}", "spacing": list(spacing), "shape": [400, 480, 200],
              "shape_after_crop": [400, 480, 200]} for i in range(10)]
    extents_vox = [[4, 4, 3]] * 30 + [[6, 6, 4]] * 20 + [[8, 8, 5]] * 16 + [[12, 12, 8]] * 2
    cmbs = [{"case": "c00", "extent_mm": (np.asarray(e) * sp).tolist()} for e in extents_vox]
    return plan_experiment({"fingerprint_version": 1, "cases": cases, "cmbs": cmbs},
                           {"channel_names": {"0": "T2S"}}, preset=preset, overrides=overrides)


def build_networks(plans, seed: int = 0) -> dict[str, nn.Module]:
    """The three stage networks with random (seeded) weights, in eval mode."""
    from cmbunet.networks import build_network

    nets = {}
    from cmbunet.plans import STAGES

    for i, stage in enumerate(STAGES):
        torch.manual_seed(seed + i)
        nets[stage] = build_network(stage, plans).eval()
    return nets


# ------------------------------------------------------------------------------------------------ FLOPs
def conv_flops(network: nn.Module, input_shape: Sequence[int]) -> float:
    """Forward FLOPs (2 x MACs) of every Conv3d / ConvTranspose3d / Linear, from the layer shapes of one forward
    pass of ``input_shape`` (N, C, X, Y, Z) on the meta device (no arithmetic is done)."""
    import copy

    net = copy.deepcopy(network).to("meta").eval()
    total = [0.0]

    def hook(mod, inp, out):
        if isinstance(mod, nn.Conv3d):
            k = int(np.prod(mod.kernel_size))
            total[0] += 2.0 * out.numel() * (mod.in_channels // mod.groups) * k
        elif isinstance(mod, nn.ConvTranspose3d):
            k = int(np.prod(mod.kernel_size))
            total[0] += 2.0 * inp[0].numel() * (mod.out_channels // mod.groups) * k
        elif isinstance(mod, nn.Linear):
            total[0] += 2.0 * out.numel() * mod.in_features

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d, nn.Linear))]
    with torch.no_grad():
        net(torch.empty(*input_shape, device="meta"))
    for h in handles:
        h.remove()
    return total[0]


def screening_fcn_flops(network: nn.Module, volume_shape: Sequence[int], plans, tile_size=None) -> float:
    """FLOPs of the tiled whole-volume FCN pass exactly as ``screening_score_map`` cuts the padded volume."""
    from cmbunet.inference.screening import fcn_geometry, output_tiles, score_map_shape

    block, stride, _ = fcn_geometry(plans)
    n_out = score_map_shape(volume_shape, plans)
    if tile_size is None:
        tile_size = plans.inference.tile_size
    tile_out = [max(1, (int(t) - int(b)) // int(s) + 1) for t, b, s in zip(tile_size, block, stride)]
    cache: dict[tuple, float] = {}
    total = 0.0
    for sl in output_tiles(n_out, tile_out):
        shape = tuple((s.stop - 1 - s.start) * st + b for s, st, b in zip(sl, stride, block))
        if shape not in cache:
            cache[shape] = conv_flops(network, (1, int(plans.num_input_channels), *shape))
        total += cache[shape]
    return total


def conv_peak(dtype: str = "fp32", repeats: int = 3, shape: Sequence[int] | None = None) -> dict[str, float]:
    """Dense Conv3d 64->64, kernel 5x5x3, valid, batch 1: median GFLOP/s over ``repeats`` timed passes (after one
    warm-up). Input 48x48x32; bf16 on a CPU without bfloat16 dot products uses a small 14x14x10 input, because
    such CPUs (AVX2 only) run it thousands of times slower."""
    if shape is None:
        from cmbunet.utilities.cpu_features import cpu_has_fast_bf16

        shape = (14, 14, 10) if dtype == "bf16" and not cpu_has_fast_bf16() else (48, 48, 32)
    conv = nn.Conv3d(64, 64, (5, 5, 3), bias=False).eval()
    x = torch.randn(1, 64, *shape)
    out_vox = np.prod([s - k + 1 for s, k in zip(shape, (5, 5, 3))])
    flops = 2.0 * 64 * 64 * 75 * out_vox
    precision = "bf16" if dtype == "bf16" else "fp32"
    times = []
    with torch.inference_mode():
        with autocast_context("cpu", precision):
            conv(x)  # warm-up (oneDNN primitive creation)
        for _ in range(repeats):
            t = time.perf_counter()
            with autocast_context("cpu", precision):
                conv(x)
            times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"dtype": dtype, "shape": list(shape), "seconds": med, "gflop": flops / 1e9, "gflops": flops / med / 1e9, "load": loadavg()}


# ------------------------------------------------------------------------------------------------ synthetic data
def realistic_case(seed: int = REALISTIC_SEED):
    from cmbunet.synthetic.generator import synthesize_case

    return synthesize_case(seed, size="realistic")


def write_case_image(case, folder: Path, name: str = "case") -> Path:
    """Write a synthetic case's T2* image as ``name_0000.nii.gz`` (nnU-Net naming); returns the path."""
    from cmbunet.imageio import SimpleITKIO

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}_0000.nii.gz"
    SimpleITKIO.write(case.images["T2S"].astype(np.float32), path, case.props)
    return path


def crop_volume(volume: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Centre crop of ``(C, X, Y, Z)`` to ``shape`` (per axis at most the volume's size)."""
    sl = [slice(None)]
    for n, s in zip(volume.shape[1:], shape):
        s = min(int(s), n)
        a = (n - s) // 2
        sl.append(slice(a, a + s))
    return np.ascontiguousarray(volume[tuple(sl)])


# ------------------------------------------------------------------------------------------------ timing
def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 0) -> tuple[float, list[float], Any]:
    """Median wall time of ``fn`` over ``repeats`` runs (after ``warmup`` untimed runs), all times, last result."""
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times, out


def run_child(script: Path, args: Sequence[str], timeout: float | None = None, threads: int | None = None) -> dict[str, Any]:
    """Run ``python script --child ARGS`` in a fresh process; it prints one JSON line starting with ``RESULT ``.
    Its own peak resident memory (ru_maxrss of RUSAGE_SELF, read by the child at exit) is in ``maxrss_mb``."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run([sys.executable, str(script), "--child", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=str(REPO))
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"child failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def child_result(result: dict[str, Any]) -> None:
    """Called by a child at the end: add its peak RSS and print the result line for :func:`run_child`."""
    result["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux
    result["load_end"] = loadavg()
    print("RESULT " + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------------------ output
def fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:
            return "n/a"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        if abs(v) >= 0.01:
            return f"{v:.3g}"
        return f"{v:.2e}"
    if isinstance(v, (list, tuple)):
        return "x".join(str(x) for x in v) if all(isinstance(x, int) for x in v) else ", ".join(fmt(x) for x in v)
    return str(v)


def print_table(rows: list[dict[str, Any]], columns: Sequence[str] | None = None) -> None:
    """A Markdown table (pasted as-is into documentation/benchmarks.md)."""
    if not rows:
        return
    columns = list(columns or rows[0].keys())
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        print("| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |")


def write_json(path: str | Path | None, payload: dict[str, Any]) -> None:
    if not path:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    print(f"# wrote {path}")


def base_parser(description: str):
    import argparse

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", help="write the results as JSON to this file")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions; the tables show the median")
    p.add_argument("--quick", action="store_true", help="small sizes, one repetition: a smoke test (< 1 minute)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    return p


def start(parser) -> tuple[Any, dict[str, Any], int]:
    """Parse the arguments, set torch's threads and print the machine: ``(args, machine info, repeats)``, where
    ``--quick`` means one repetition."""
    args = parser.parse_args()
    setup_threads(args.threads)
    info = machine_info()
    print_machine(info)
    return args, info, 1 if args.quick else args.repeats


def setup_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(int(n))
