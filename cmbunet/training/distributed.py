"""Multi-process training: DistributedDataParallel over N processes (gloo on CPU, nccl on GPU).

``--num-gpus N`` spawns N processes with ``torch.multiprocessing.spawn``; when started by ``torchrun`` the
process group is taken from its environment variables instead. Every rank draws its own samples (the epoch
RNG depends on the rank), gradients are averaged by DDP, and only rank 0 writes files.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank, the number of processes and its device."""

    rank: int = 0
    world_size: int = 1
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """``torchrun`` sets these for every process it starts."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


def is_primary_process() -> bool:
    """True in the one process that owns a run's folder: the only process, or rank 0 of ``torchrun``'s. The
    others only train; the rendezvous in :func:`launch` holds them back until rank 0 has prepared the folder."""
    return not launched_by_torchrun() or int(os.environ["RANK"]) == 0


def free_port() -> int:
    """An unused TCP port on this machine for the rendezvous of spawned processes."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rank_device(device: str, local_rank: int) -> str:
    """``cuda:<local rank>`` for GPU training, ``cpu`` otherwise."""
    return f"cuda:{local_rank}" if device.startswith("cuda") else "cpu"


def init_process_group(rank: int, world_size: int, device: str) -> DistInfo:
    """Join the process group (env:// rendezvous) with the backend that suits the device."""
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("cuda"):
        torch.cuda.set_device(int(rank_device(device, int(os.environ.get("LOCAL_RANK", rank))).split(":")[1]))
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistInfo(rank, world_size, rank_device(device, int(os.environ.get("LOCAL_RANK", rank))))


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _worker(rank: int, world_size: int, device: str, fn: Callable[..., Any], args: tuple) -> None:
    os.environ["RANK"], os.environ["LOCAL_RANK"], os.environ["WORLD_SIZE"] = str(rank), str(rank), str(world_size)
    threads = max(1, (os.cpu_count() or 1) // world_size)
    if not device.startswith("cuda"):
        torch.set_num_threads(threads)
    info = init_process_group(rank, world_size, device)
    try:
        fn(info, *args)
    finally:
        cleanup()


def launch(fn: Callable[..., Any], world_size: int, device: str, *args: Any) -> None:
    """Run ``fn(DistInfo, *args)`` on ``world_size`` processes (or in this process when it is 1 / under torchrun)."""
    if launched_by_torchrun():
        info = init_process_group(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), device)
        try:
            fn(info, *args)
        finally:
            cleanup()
        return
    if world_size <= 1:
        fn(DistInfo(0, 1, rank_device(device, 0)), *args)
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(free_port())
    mp.spawn(_worker, args=(world_size, device, fn, args), nprocs=world_size, join=True)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_gather_objects(info: DistInfo, obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (just ``[obj]`` without DDP)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(info: DistInfo, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_across_ranks(info: DistInfo, value: float) -> float:
    """Average of a scalar over the ranks (for the logged training loss)."""
    if not info.enabled:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64,
                     device=info.device if info.device.startswith("cuda") else "cpu")
    dist.all_reduce(t)
    return float(t.item()) / info.world_size
