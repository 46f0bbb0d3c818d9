"""What the RGA stage drivers share: the stage's seed, the clicked training requests and their
slates, the previous stage's folder and pools, and the policy-training loop of stages 4 and 5."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rgalign.errors import TrainError
from rgalign.models.reasoner import Reasoner
from rgalign.training import loops
from rgalign.training.context import Context
from rgalign.artifacts.run import STAGE_NAMES
from rgalign.training.distributed import batch_weight, shard, steps_per_epoch as steps_per_epoch_of
from rgalign.training.schedule import one_cycle
from rgalign.training.shard_data import share

CANDIDATES = "candidates.jsonl"


def stage_seed(ctx: Context, index: int, round_: int) -> int:
    return ctx.config.seed * 1000 + 100 * round_ + index


def clicked_rows(ctx: Context, limit: int, seed: int, shared: bool = True) -> np.ndarray:
    """Training requests with at least one click, a seeded subsample of ``limit`` (sorted); with
    the data sharded and ``shared``, this rank's part of ``limit`` (collective)."""
    tr = ctx.splits["train"]
    rows = np.flatnonzero((tr.mask & (tr.labels > 0)).any(axis=1))
    if shared:
        limit = share(limit, len(rows), ctx.dist)
    if len(rows) > limit:
        rows = np.sort(np.random.default_rng(seed).choice(rows, limit, replace=False))
    return rows


def slate(ctx: Context, rows: np.ndarray) -> dict[str, torch.Tensor]:
    tr = ctx.splits["train"]
    return {
        "cat": torch.from_numpy(tr.cat[rows]), "num": torch.from_numpy(tr.num[rows]),
        "shown": torch.from_numpy(tr.shown[rows]), "labels": torch.from_numpy(tr.labels[rows]),
        "mask": torch.from_numpy(tr.mask[rows]),
    }


def previous_stage(ctx: Context, index: int, round_: int) -> Path:
    """The folder of stage ``index`` of this round, which must have finished."""
    d = ctx.run.stage_dir(index, round_)
    if not ctx.run.finished(index, round_):
        raise TrainError(f"{ctx.run.root}: stage {index + 1} needs stage {index} ({STAGE_NAMES[index]}) of round "
                         f"{round_} first; run `rgalign train` with --stages {index}-{index + 1}")
    return d


def read_pools(stage_dir: Path, ctx: Context | None = None) -> list[dict[str, Any]]:
    """Stage 3's pools. With the data sharded (``ctx``), those of this rank's training requests,
    their ``row`` made this rank's: the file holds every rank's, by request id."""
    with open(stage_dir / CANDIDATES) as f:
        pools = [json.loads(line) for line in f if line.strip()]
    if ctx is None or not ctx.dist.data_sharded:
        return pools
    local = {str(rid): i for i, rid in enumerate(ctx.splits["train"].request_ids)}
    return [{**p, "row": local[p["request_id"]]} for p in pools if p["request_id"] in local]


def train_policy(
    ctx: Context,
    policy: Reasoner,
    n_items: int,
    step: Callable[[np.ndarray], tuple[torch.Tensor, dict[str, float]]],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    description: str,
    lengths: np.ndarray | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> loops.LossLog:
    """The loop stages 4 and 5 share: AdamW with a one-cycle schedule over ``epochs`` passes of
    ``n_items`` in seeded, rank-sharded batches (of similar ``lengths`` when given, see
    `loops.epoch_batches`); ``step(idx)`` returns the batch's loss (with its graph) and the floats
    to log (the first is shown on the progress bar). ``step`` runs inside ``autocast()`` (bf16,
    see `finetune.autocast_for`); the trained parameters are those of ``policy`` that require grad."""
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    steps_per_epoch = steps_per_epoch_of(n_items, batch_size, ctx.dist)
    total = max(1, epochs * steps_per_epoch)
    sched = one_cycle(opt, max_lr=lr, total_steps=total, pct_start=0.1)  # 10 steps: see schedule.py
    log = loops.LossLog()
    policy.train()
    with loops.progress(disable=ctx.quiet or not ctx.dist.is_main) as bar:
        task = bar.add_task(description, total=total, info="")
        for epoch in range(epochs):
            order = shard(rng.permutation(n_items), ctx.dist)
            for idx in loops.epoch_batches(order, batch_size, steps_per_epoch, rng, lengths,
                                           pad_empty=ctx.dist.data_sharded):
                # the data sharded: a rank past its items steps on item 0 (a blank stand-in where it
                # has none) at weight 0; the others' losses are weighed by their rows
                weight = batch_weight(len(idx), ctx.dist)
                if len(idx) == 0:
                    idx = np.zeros(1, np.int64)
                with autocast():
                    loss, stats = step(idx)
                if weight != 1.0:
                    loss = torch.nan_to_num(loss) * weight
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                log.add(epoch=epoch, step=len(log.rows), **stats)
                bar.update(task, advance=1, info=" ".join(f"{name} {v:.3f}" for name, v in list(stats.items())[:2]))
    policy.eval()
    return log
