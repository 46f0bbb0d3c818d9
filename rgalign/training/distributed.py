"""Multi-process training under ``torchrun``: gloo on CPU, NCCL on GPU, on one machine or many
(torchrun's ``--nnodes/--node-rank/--rdzv-endpoint`` set the environment read here).

Outside torchrun everything here degrades to a single process, so the stages call these helpers
unconditionally. Rank 0 writes every artifact; the others wait at a barrier. How a model is
spread over the processes (DDP or FSDP2) is `rgalign.training.parallel`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from rgalign.errors import ConfigError


# How a model is trained on several processes (`rgalign.training.parallel`): "ddp" replicates it
# (small models), "fsdp" shards parameters, gradients and optimizer state (FSDP2, big backbones),
# "auto" picks by parameter count.
STRATEGIES = ("auto", "ddp", "fsdp")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    strategy: str = "auto"
    # steps between resumable training states of a sharded stage (0: none); see global_sft
    checkpoint_every: int = 0
    # each rank holds only its shard of the log (`rgalign.training.shard_data`): the loops take
    # every local row (no index sharding) and all-reduce their step counts, metrics merge
    data_sharded: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(strategy: str = "auto", checkpoint_every: int = 0) -> DistInfo:
    """Join the process group that torchrun describes in the environment (WORLD_SIZE > 1)."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"--dist {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(strategy=strategy, checkpoint_every=checkpoint_every)
    if not dist.is_initialized():
        backend = "gloo"
        if torch.cuda.is_available():  # one GPU per process: torchrun numbers them per node
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            # NCCL for CUDA tensors, gloo for the CPU ones (metrics, counts, the rankers' loops)
            backend = "cpu:gloo,cuda:nccl"
        dist.init_process_group(backend=backend)
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), strategy=strategy,
                    checkpoint_every=checkpoint_every)


def device(info: DistInfo) -> torch.device:
    """Where this rank trains a sharded reasoner: its GPU under NCCL, else the CPU."""
    if info.enabled and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shard(indices: np.ndarray, info: DistInfo) -> np.ndarray:
    """This rank's share of ``indices``, padded by wrap-around so every rank runs the same number
    of steps (DDP all-reduces once per step: unequal step counts would hang). With the data
    sharded (``info.data_sharded``) the indices are this rank's own rows already: all of them."""
    if not info.enabled or info.data_sharded:
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


def steps_per_epoch(n_items: int, batch_size: int, info: DistInfo) -> int:
    """Optimizer steps in one pass over ``n_items`` in batches of ``batch_size`` per rank, the same
    on every rank: of ``ceil(n / world)`` items when the indices are sharded (`shard`), of the
    largest rank's own items when the data is (a smaller rank repeats batches: `loops.epoch_batches`)."""
    if info.data_sharded:
        return all_reduce_max(math.ceil(n_items / batch_size), info)
    return math.ceil(math.ceil(n_items / info.world_size) / batch_size)


def batch_weight(n_local: int, info: DistInfo) -> float:
    """What a rank's mean loss over its ``n_local`` rows is multiplied by so that DDP's average of
    the ranks' gradients is the mean over every rank's rows of the step: ``world * n_local /
    n_all``. With the data sharded, shards differ in size (a ts-ordered log's last shard holds the
    valid and test requests): a rank past its own batches steps at weight 0 instead of repeating
    some, so an epoch counts each request once, as in one process. 1 otherwise (one all-reduce a
    step only with the data sharded)."""
    if not (info.data_sharded and info.enabled):
        return 1.0
    total = all_reduce_sum(float(n_local), info)
    return info.world_size * n_local / total if total else 0.0


def all_reduce_max(value: int, info: DistInfo) -> int:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def all_gather_object(obj, info: DistInfo) -> list:
    """``obj`` of every rank, in rank order (``[obj]`` in one process): picklable values only,
    exchanged in memory, never written to disk."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_array(values: np.ndarray, info: DistInfo) -> np.ndarray:
    """Element-wise sum over the ranks of a numeric array (float64 / int64 kept exact)."""
    if not info.enabled:
        return values
    t = torch.from_numpy(np.ascontiguousarray(values))
    t = t.clone()
    dist.all_reduce(t)
    return t.numpy()


def all_reduce_mean(value: float, info: DistInfo) -> float:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


def all_reduce_sum(value: float, info: DistInfo) -> float:
    """Sum of ``value`` over the ranks (float64, so token counts and loss sums stay exact)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())


def rank_slice(batch: np.ndarray, info: DistInfo) -> np.ndarray:
    """This rank's rows of one *global* batch (rows ``rank, rank + world, ...``): what makes a
    step's update the same whatever the number of processes. May be empty (a last batch smaller
    than the world); the caller then runs a zero-weight row so every rank joins the collectives.
    With the data sharded, the batch is drawn from this rank's own rows: all of it."""
    return batch[info.rank :: info.world_size] if info.enabled and not info.data_sharded else batch
