"""Run by tests/unit/test_global_loop_sharded.py under torchrun (2 processes, gloo):

    python -m torch.distributed.run --nproc-per-node 2 tests/unit/sharded_loop_worker.py JOBS.json

Each job trains a linear model by `global_loop.train_global` with the data sharded: rank r holds
the rows ``job["items"][r]`` of `data()` (possibly none: it then holds a stand-in row it steps on
at weight 0). Rank 0 writes the final weights, the logged losses and the counts to ``job["out"]``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rgalign.training.distributed import DistInfo, init_distributed
from rgalign.training.global_loop import train_global

BATCH, EPOCHS, LR, SEED = 4, 2, 0.05, 3


def data() -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(12, 3)).astype(np.float32))
    return x, x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3


def model() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(3, 1)


def constant_rate(opt: torch.optim.Optimizer, total: int):
    return lambda step: None


def run(job: dict, dist: DistInfo) -> None:
    x, y = data()
    items = job["items"][dist.rank]
    rows = np.array(items or [0], dtype=np.int64)  # [0]: the stand-in of a rank without items

    def step(module: nn.Module, batch: np.ndarray, local: np.ndarray):
        own = rows[batch[local]]
        mean = ((module(x[own]) - y[own]) ** 2).mean()
        return mean, len(own), {"mse": float(mean.detach())}

    net = model()
    res = train_global(net, len(items), step, epochs=EPOCHS, batch_size=BATCH, lr=LR, weight_decay=0.01, seed=SEED,
                       dist=DistInfo(dist.rank, dist.world_size, "ddp", data_sharded=True), schedule=constant_rate,
                       config={}, quiet=True)
    weights = [p.detach().flatten().tolist() for p in net.parameters()]
    gathered = [None] * dist.world_size
    torch.distributed.all_gather_object(gathered, weights)
    if dist.is_main:
        Path(job["out"]).write_text(json.dumps({"weights": gathered, "mse": [r["mse"] for r in res.log.rows],
                                                "items": res.items, "units": res.units}))


def main(jobs_file: str) -> None:
    torch.set_num_threads(1)
    dist = init_distributed()
    for job in json.loads(Path(jobs_file).read_text()):
        run(job, dist)
    # every rank done with its collectives, then out without C++ destructors: tearing the gloo
    # group down aborted one rank at exit now and then ("terminate called without an active
    # exception") after its results were written; the results are what this worker is for
    torch.distributed.barrier()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])
