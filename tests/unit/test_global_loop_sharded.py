"""`global_loop.train_global` with the data sharded (each rank holds its own items): 2 processes
(torchrun, gloo) take the same number of steps, the largest shard's, and each step's update is the
one of the mean loss over the rows of both ranks' local batches (what one process computes on
their union); a rank past its items, or with none, steps at weight 0."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rgalign.training.distributed import DistInfo
from rgalign.training.global_loop import GlobalRows, LocalRows, data_source

sys.path.insert(0, str(Path(__file__).parent))
import sharded_loop_worker as worker  # noqa: E402
from test_training_parallel import _env, _free_port, _jobs, _wait  # noqa: E402

CASES = {"unequal": [[0, 1, 2, 3, 4, 5, 6], [7, 8, 9]], "empty_rank": [[0, 2, 4, 6, 8], []]}


def _reference(items: list[list[int]]) -> dict:
    """One process: each step's rows are the union of the ranks' local batches (drawn as
    `LocalRows` draws them), the loss their mean; AdamW and clipping as `train_global`."""
    x, y = worker.data()
    net = worker.model()
    opt = torch.optim.AdamW(list(net.parameters()), lr=worker.LR, weight_decay=0.01)
    local = math.ceil(worker.BATCH / 2)
    steps = max(1, max(math.ceil(len(it) / local) for it in items))
    sources = [LocalRows(len(it), local, DistInfo(r, 2, data_sharded=True), worker.SEED, steps)
               for r, it in enumerate(items)]
    mse, n_items = [], 0
    for epoch in range(worker.EPOCHS):
        draws = [s.draw(np.random.default_rng(), epoch, None) for s in sources]
        for k in range(steps):
            own = np.concatenate([np.asarray(it, dtype=np.int64)[d[k]] for it, d in zip(items, draws)])
            n_items += len(own)
            loss = ((net(x[own]) - y[own]) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(net.parameters()), 1.0)
            opt.step()
            mse.append(float(loss.detach()))
    return {"weights": [p.detach().flatten().tolist() for p in net.parameters()], "mse": mse, "items": n_items,
            "steps": steps}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("sharded_loop")
    jobs = [{"items": items, "out": str(tmp / f"{name}.json")} for name, items in CASES.items()]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), worker.__file__, str(_jobs(tmp, "jobs", jobs))]
    _wait([subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())])
    return {name: json.loads((tmp / f"{name}.json").read_text()) for name in CASES}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_two_sharded_ranks_take_the_mean_over_the_steps_rows(runs, name):
    got, ref = runs[name], _reference(CASES[name])
    assert len(got["mse"]) == worker.EPOCHS * ref["steps"]  # the largest shard's steps, on both ranks
    assert got["items"] == ref["items"] == worker.EPOCHS * sum(len(it) for it in CASES[name])
    np.testing.assert_allclose(got["mse"], ref["mse"], rtol=1e-5, atol=1e-7)
    for rank_weights in got["weights"]:  # both replicas end alike, at the one-process update
        for w, r in zip(rank_weights, ref["weights"]):
            np.testing.assert_allclose(w, r, rtol=1e-5, atol=1e-6)


def test_the_source_is_global_unless_the_data_is_sharded_over_processes():
    assert isinstance(data_source(9, 4, DistInfo(), 0), GlobalRows)
    assert isinstance(data_source(9, 4, DistInfo(data_sharded=True), 0), GlobalRows)  # one process: one shard
    assert isinstance(data_source(9, 4, DistInfo(0, 2), 0), GlobalRows)
    src = LocalRows(3, 2, DistInfo(1, 2, data_sharded=True), 0, 4)
    batches = src.draw(np.random.default_rng(), 0, None)
    assert [len(b) for b in batches] == [2, 1, 0, 0]  # past its items: empty batches, stepped at weight 0
    assert src.local(batches[-1])[2] == 0.0 and src.local(batches[0])[2] == 1.0
