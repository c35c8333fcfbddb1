"""Training throughput on the CPU: samples per second of each stage (forward + backward + optimiser step, the
schedule's batch size, loss and optimiser from the plans), for full-width (``auto``) and ``tiny`` networks at
VALDO spacing, and the time the full default CPU schedule takes, estimated as

    sum over stages of epochs x (samples_per_epoch / train samples/s + val_samples / eval samples/s)
    + mining passes (len(mining_epochs) + 1 final) x training cases x one whole-volume screening pass.

Batches are random tensors of the stage's patch size (the training loop builds them in ``--num-workers`` background
processes while the network trains, so the network step is the bottleneck on 2 cores only when the workers keep
up; this script measures the network step alone). The whole-volume screening time of the mining passes is
measured here on a 96x96x64 volume and scaled by voxels to a preprocessed VALDO-sized case (298x338x150).

    python benchmarks/training_throughput.py --repeats 3 --out benchmarks/results/training_throughput.json
    python benchmarks/training_throughput.py --quick
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cmbunet.plans import STAGES

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

VALDO_PREPROCESSED = (298, 338, 150)


def batch_for(stage: str, plans, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    size = [int(s) for s in plans.stage(stage).input_size]
    x = torch.randn(batch_size, int(plans.num_input_channels), *size)
    if stage == "segmentation":
        y = torch.zeros(batch_size, *size, dtype=torch.int64)
        y[:, size[0] // 2 - 2: size[0] // 2 + 2, size[1] // 2 - 2: size[1] // 2 + 2, size[2] // 2 - 1: size[2] // 2 + 1] = 1
    else:
        y = torch.arange(batch_size) % 2
    return x, y


def throughput(stage: str, plans, schedule, steps: int, repeats: int) -> dict:
    from cmbunet.networks import build_network
    from cmbunet.training.loop import GRAD_CLIP_NORM, build_optimizer
    from cmbunet.training.losses import build_loss

    torch.manual_seed(0)
    net = build_network(stage, plans).train()
    opt = build_optimizer(net, schedule)
    loss_fn = build_loss(schedule)
    bs = int(schedule.batch_size)
    x, y = batch_for(stage, plans, bs)

    def train_steps():
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), GRAD_CLIP_NORM)
            opt.step()

    def eval_steps():
        net.eval()
        with torch.inference_mode():
            for _ in range(steps):
                net(x)
        net.train()

    train_steps()  # warm-up
    t_train, train_times, _ = C.median_time(train_steps, repeats)
    t_eval, _, _ = C.median_time(eval_steps, repeats, warmup=1)
    return {"batch": bs, "train samples/s": steps * bs / t_train, "eval samples/s": steps * bs / t_eval,
            "train_times": train_times}


def screening_seconds_per_voxel(plans, quick: bool) -> float:
    from cmbunet.inference.screening import screening_score_map
    from cmbunet.networks import build_network

    net = build_network("screening", plans).eval()
    shape = (32, 32, 24) if quick else (96, 96, 64)
    vol = np.random.default_rng(0).normal(size=(1, *shape)).astype(np.float32)
    screening_score_map(net, vol[:, :32, :32, :24], plans)  # warm-up
    t = time.perf_counter()
    screening_score_map(net, vol, plans)
    return (time.perf_counter() - t) / float(np.prod(shape))


def main() -> None:
    p = C.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["auto", "tiny"])
    p.add_argument("--steps", type=int, default=2, help="optimiser steps per timed repetition")
    p.add_argument("--train-cases", type=int, default=58, help="training cases of a fold (VALDO task 2: 72 x 4/5)")
    a, info, repeats = C.start(p)
    steps = 1 if a.quick else a.steps
    load_start = C.loadavg()
    print(f"# load {load_start}")
    rows, schedule_rows = [], []
    for preset in a.presets:
        plans = C.make_plans(preset)
        sched_all = plans.training.cpu
        s_per_vox = screening_seconds_per_voxel(plans, a.quick)
        total = 0.0
        for stage in STAGES:
            sched = sched_all.stage(stage)
            if a.quick:
                sched = dataclasses.replace(sched, batch_size=min(int(sched.batch_size), 4))
            r = throughput(stage, plans, sched, steps, repeats)
            epochs, n, nval = int(sched.epochs), int(sched.samples_per_epoch), int(sched.val_samples)
            train_s = epochs * (n / r["train samples/s"] + nval / r["eval samples/s"])
            mining = len(sched_all.screening.mining_epochs) + 1 if stage == "screening" else 0
            mining_s = mining * a.train_cases * s_per_vox * float(np.prod(VALDO_PREPROCESSED))
            total += train_s + mining_s
            rows.append({"preset": preset, "stage": stage, "patch": [int(v) for v in plans.stage(stage).input_size],
                         "batch": r["batch"], "train samples/s": r["train samples/s"],
                         "eval samples/s": r["eval samples/s"], "epochs x samples": f"{epochs} x {n}",
                         "stage minutes": train_s / 60, "mining minutes": mining_s / 60})
            print(f"# {preset} {stage}: {r['train samples/s']:.2f} train samples/s, load {C.loadavg()}", flush=True)
        schedule_rows.append({"preset": preset, "whole CPU schedule (hours)": total / 3600,
                              "screening s per voxel (FCN)": s_per_vox,
                              "one mining pass of a 298x338x150 case (s)": s_per_vox * float(np.prod(VALDO_PREPROCESSED))})
    load_end = C.loadavg()
    C.print_table(rows)
    print()
    C.print_table(schedule_rows)
    print(f"# load average: start {load_start}, end {load_end}; {a.train_cases} training cases for mining")
    C.write_json(a.out, {"script": "training_throughput", "machine": info, "argv": sys.argv, "rows": rows,
                         "schedule": schedule_rows, "load_start": load_start, "load_end": load_end,
                         "repeats": repeats, "steps": steps})


if __name__ == "__main__":
    main()
