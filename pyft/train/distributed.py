"""Processes under ``torchrun``: process group setup and the few collectives the loop needs besides
the gradient reduction (which :mod:`pyft.train.parallel` leaves to DDP or FSDP2).

Backend: gloo on CPU, NCCL on CUDA. Rank 0 alone logs and writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (``world == 1`` when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """Whether more than one process takes part."""
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and saves."""
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group described by torchrun's environment (``WORLD_SIZE`` > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistInfo(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def all_reduce_sum(value: float | int, info: DistInfo, device: torch.device) -> float:
    """Sum a number over ranks."""
    if not info.enabled:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def reduce_sums(sums: dict[str, float], info: DistInfo, device: torch.device,
                agree_keys: bool = False) -> dict[str, float]:
    """Sum each entry of ``sums`` over ranks (keys sorted). Training steps give every rank the same keys;
    in evaluation a rank may hold no batch, so ``agree_keys`` first gathers the union of the keys."""
    if not info.enabled:
        return dict(sorted(sums.items()))
    keys = sorted(set().union(*gather_objects(sorted(sums), info))) if agree_keys else sorted(sums)
    return {k: all_reduce_sum(sums.get(k, 0.0), info, device) for k in keys}


def all_reduce_max(value: float | int, info: DistInfo, device: torch.device) -> float:
    """The largest ``value`` over ranks."""
    if not info.enabled:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order (on every rank)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    """Wait for all ranks."""
    if info.enabled:
        dist.barrier()


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
