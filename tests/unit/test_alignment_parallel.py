"""Stages 3 (RG-SFT), 4 (DPO) and 5 (RG-CL) on 2 processes, FSDP2 and DDP (CPU, gloo, one torchrun),
and FSDP2 with LoRA adapters and activation checkpointing, give the per-step losses of one process: the stage drivers themselves on copies of one run folder
(stages 1-2 done in this interpreter), each writing its losses.csv; stages 4-5 start from the one
stage 3 of one process, whose pools are given clear preferences so that DPO has pairs. One process runs with
``--checkpoint-every`` so that stage 3 takes the global-batch SFT too (without it one process keeps
`loops.train_sft`, whose results the quickstart's figures come from). Sizes are picked so a last
batch leaves one rank empty (stage 3: 17 examples in batches of 8). About 3 minutes on 2 cores (both modes, load ~8).

A stage interrupted mid-way resumes from its state (``--checkpoint-every``) and ends where the
uninterrupted one does."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fakes import E2E_DATA, TINY_TRAIN
from rgalign.data.synth import synthesize
from rgalign.training import rga, trainer
from rgalign.training.alignment import CANDIDATES, RGA_STAGES
from rgalign.training.config import TrainConfig
from rgalign.training.distributed import DistInfo
from test_training_parallel import RTOL, WORKER, _free_port, _jobs, _torchrun, _wait

CONFIG = {**TINY_TRAIN, "warmup": {"max_examples": 24, "batch_size": 8}, "reward": {"epochs": 1, "batch_size": 64},
          "rg_sft": {**TINY_TRAIN["rg_sft"], "max_requests": 17, "batch_size": 8, "n_candidates": 4, "n_sampled": 2},
          "dpo": {"batch_size": 4, "min_margin": 0.0, "epochs": 2},
          "rg_cl": {**TINY_TRAIN["rg_cl"], "max_requests": 30, "batch_size": 8}}
# LoRA's dropout (0.05 by default) draws its masks per process: 2 processes then train like 1 in
# distribution, not step by step; without it the steps are the same
LORA = {**CONFIG, "finetune": {"lora": "on", "gradient_checkpointing": "on", "lora_rank": 4, "lora_dropout": 0.0}}
MODES = {"full": (CONFIG, ("fsdp", "ddp")), "lora": (LORA, ("fsdp",))}  # LoRA: adapters sharded with their layers
STAGES = {3: ("3-rg-sft", "lm_loss"), 4: ("4-dpo", "loss"), 5: ("5-rg-cl", "info_nce")}
EVERY = 1000  # --checkpoint-every: a state only at the end (the global loop on one process too)


def _losses(run: Path, index: int) -> list[float]:
    folder, key = STAGES[index]
    with open(run / "stages" / folder / "losses.csv") as f:
        return [float(row[key]) for row in csv.DictReader(f)]


def _opinionated_pools(run: Path) -> None:
    """Give stage 3's pools the opinions of a reward model that has them (first candidate best):
    one of this size scores every candidate alike, and DPO would skip (as tests/e2e/test_lora_run)."""
    pools = run / "stages" / "3-rg-sft" / CANDIDATES
    rows = [json.loads(line) for line in pools.read_text().splitlines()]
    for r in rows:
        r["rewards"] = [1.0 - 0.1 * k for k in range(len(r["candidates"]))]
        r["user_rewards"] = [r["rewards"]] * 2  # two of the user's slates agreeing (dpo.pairs: user)
    pools.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module", params=sorted(MODES))
def runs(request, tmp_path_factory) -> dict:
    """Run folders of full fine-tuning and of LoRA: ``one`` (stages 3-5 on one process),
    ``<strategy>3`` (stage 3 on 2), ``<strategy>`` (stages 4-5 on 2, from ``one``'s stage 3),
    ``resumed`` (``one``'s stage 3)."""
    sys.path.insert(0, str(WORKER.parent))
    import parallel_worker

    config, strategies = MODES[request.param]
    tmp = tmp_path_factory.mktemp(f"rga_parallel_{request.param}")
    data = synthesize(tmp / "data", **E2E_DATA)
    base = tmp / "base"
    ctx = trainer.prepare(data, base, TrainConfig.from_dict(config), DistInfo(), lambda m: None, True)
    for i in (1, 2):
        torch.manual_seed(i)
        trainer.STAGES[i](ctx)
    for name in ("one", *(f"{s}3" for s in strategies)):
        shutil.copytree(base, tmp / name)
    job = {"kind": "stages", "data": str(data), "config": config, "checkpoint_every": EVERY}
    parallel_worker.run_stages({**job, "strategy": "auto", "run": str(tmp / "one"), "stages": [3]}, DistInfo())
    _opinionated_pools(tmp / "one")
    for name in (*strategies, "resumed"):
        shutil.copytree(tmp / "one", tmp / name)
    parallel_worker.run_stages({**job, "strategy": "auto", "run": str(tmp / "one"), "stages": [4, 5]}, DistInfo())
    jobs = [{**job, "strategy": s, "run": str(tmp / f"{s}3"), "stages": [3]} for s in strategies]
    jobs += [{**job, "strategy": s, "run": str(tmp / s), "stages": [4, 5]} for s in strategies]
    _wait([_torchrun(["--standalone", "--nproc_per_node", "2", "--master_port", str(_free_port())],
                     _jobs(tmp, "stages", jobs))])
    names = ("one", "resumed", *strategies, *(f"{s}3" for s in strategies))
    return {name: tmp / name for name in names} | {"data": data, "config": config, "strategies": strategies,
                                                   "mode": request.param}


@pytest.mark.slow
@pytest.mark.parametrize("index", [3, 4, 5])
def test_two_processes_give_the_stage_losses_of_one(runs, index):
    one = _losses(runs["one"], index)
    assert len(one) >= 3
    for strategy in runs["strategies"]:
        run = runs[f"{strategy}3" if index == 3 else strategy]
        np.testing.assert_allclose(_losses(run, index), one, rtol=RTOL, err_msg=strategy)
        info = json.loads((run / "stages" / STAGES[index][0] / "stage.json").read_text())
        assert info["dist"]["world_size"] == 2 and info["dist"]["strategy"] == strategy
        assert info["finetune"]["lora"] == (runs["mode"] == "lora")
        assert "skipped" not in info  # DPO trained on pairs
        assert not (run / "train_state").exists()  # each stage removed its state once saved


@pytest.mark.slow
def test_an_interrupted_dpo_stage_resumes_from_its_state(runs, monkeypatch):
    """Stage 4 stopped by an error after 5 of its steps (a state every 2), then run again: it
    resumes at step 4 and its losses are those of the uninterrupted stage."""
    run = runs["resumed"]  # stage 3 done (one process), the pools opinionated
    ctx = trainer.prepare(runs["data"], run, TrainConfig.from_dict(runs["config"]), DistInfo(checkpoint_every=2),
                          lambda m: None, True)
    calls, real = [0], rga.dpo_loss

    def interrupted(*args, **kwargs):
        calls[0] += 1
        if calls[0] > 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(rga, "dpo_loss", interrupted)
    torch.manual_seed(ctx.config.seed * 1000 + 4)  # as the worker (and trainer.train) seed a stage
    with pytest.raises(KeyboardInterrupt):
        RGA_STAGES[4](ctx, 0)
    state = json.loads((run / "train_state" / "4-dpo" / "train_state.json").read_text())
    assert state["meta"]["step"] == 4
    monkeypatch.setattr(rga, "dpo_loss", real)
    torch.manual_seed(ctx.config.seed * 1000 + 4)
    RGA_STAGES[4](ctx, 0)
    np.testing.assert_allclose(_losses(run, 4), _losses(runs["one"], 4), rtol=RTOL)
    assert not (run / "train_state").exists()
