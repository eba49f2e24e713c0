"""DistributedDataParallel helpers: set-up under torchrun, what all ranks agree on, means over
ranks, every rank's generator, and the check that replicas stayed identical. With one process
(world 1) each is a no-op that needs no process group."""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

from model import resolve_device


def setup_distributed(device_flag: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun: one process per GPU (NCCL) or CPU (gloo)."""
    device = resolve_device(device_flag)
    if "RANK" not in os.environ:
        return 0, 1, device
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def agreed(value: int, world: int, device: torch.device) -> int:
    """The largest `value` over all ranks, on every rank: what one rank saw (a signal, the
    clock), all act on at the same step."""
    if world == 1:
        return value
    t = torch.tensor([int(value)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t)


def mean_over_ranks(metrics: dict, world: int, device: torch.device) -> dict:
    """`metrics` (evaluate.py's: "masks" counted, "max_clicks", and means over those masks)
    with each mean taken over every rank's masks and "masks" summed; a NaN mean counts 0.
    Updated in place and returned. All ranks must call it."""
    if world > 1:
        keys = [k for k in metrics if k not in ("masks", "max_clicks")]
        n = metrics["masks"]
        t = torch.tensor([n, *(metrics[k] * n for k in keys)], device=device)
        dist.all_reduce(t.nan_to_num_(0.0))
        metrics |= {"masks": int(t[0])} | {k: float(v / t[0]) for k, v in zip(keys, t[1:])}
    return metrics


def gather_generators(gen: torch.Generator, world: int) -> list[torch.Tensor]:
    """Every rank's generator state (all ranks must call this), so each resumes as its own."""
    if world == 1:
        return [gen.get_state()]
    states: list = [None] * world
    dist.all_gather_object(states, gen.get_state())
    return states


def check_replicas(sam) -> None:
    """DDP keeps replicas identical; verify it (cheaply, by per-tensor sums) before finishing."""
    sums = torch.stack([p.detach().double().sum() for p in sam.parameters() if p.requires_grad])
    ref = sums.clone()
    dist.broadcast(ref, 0)
    if not torch.allclose(sums, ref, rtol=0, atol=1e-9):
        raise RuntimeError(f"rank {dist.get_rank()}: weights drifted from rank 0")
    if dist.get_rank() == 0:
        print("replicas identical across ranks", file=sys.stderr)
