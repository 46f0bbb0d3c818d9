"""Multi-process training under ``torchrun`` (DDP): gloo on CPU, NCCL on GPU.

Outside torchrun everything here degrades to a single process, so the stages call these helpers
unconditionally. Rank 0 writes every artifact; the others wait at a barrier.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Join the process group that torchrun describes in the environment (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shard(indices: np.ndarray, info: DistInfo) -> np.ndarray:
    """This rank's share of ``indices``, padded by wrap-around so every rank runs the same number
    of steps (DDP all-reduces once per step: unequal step counts would hang)."""
    if not info.enabled:
        return indices
    per_rank = -(-len(indices) // info.world_size)
    padded = np.resize(indices, per_rank * info.world_size)
    return padded[info.rank :: info.world_size]


def all_gather_rows(local: torch.Tensor, total: int, info: DistInfo) -> torch.Tensor:
    """Inverse of :func:`shard` for per-row results: gather (n_local, ...) from every rank back into
    the original order of ``total`` rows."""
    if not info.enabled:
        return local
    parts = [torch.empty_like(local) for _ in range(info.world_size)]
    dist.all_gather(parts, local.contiguous())
    stacked = torch.stack(parts, dim=1)  # (n_local, world, ...): row j of rank r is index j*world + r
    return stacked.reshape(-1, *local.shape[1:])[:total]


def all_reduce_mean(value: float, info: DistInfo) -> float:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size
