"""What the RGA stage drivers share: the stage's seed, the clicked training requests and their
slates, the previous stage's folder and pools, and the policy-training loop of stages 4 and 5
(`train_policy`, over `global_loop`, the loop the SFT of stages 1 and 3 runs on too)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rgalign.errors import TrainError
from rgalign.training import loops
from rgalign.training.context import Context
from rgalign.artifacts.run import STAGE_NAMES
from rgalign.training.global_loop import StepFn, one_cycle_schedule, state_for_stage, train_global
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


def stage_state_dir(ctx: Context, index: int, round_: int) -> Path:
    """Where stage ``index`` of ``round_`` keeps its resumable training state (``--checkpoint-every``)
    until the stage is saved: ``train_state/<the stage folder's name>`` in the run."""
    return ctx.run.root / "train_state" / ctx.run.stage_dir(index, round_).name


def train_policy(
    ctx: Context,
    module: nn.Module,
    n_items: int,
    step: StepFn,
    *,
    index: int,
    round_: int,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    description: str,
    lengths: np.ndarray | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> loops.LossLog:
    """The loop of stages 4 and 5: `global_loop.train_global` (global batches of ``batch_size``,
    the same update on any number of processes, DDP or FSDP2) with a one-cycle schedule (10%
    warm-up, see schedule.py), resumable from ``stage_state_dir`` under ``--checkpoint-every``.
    ``module`` is what ``step`` calls (the policy, or a module around it); its parameters that
    require grad are trained. The stage removes the state (`drop_stage_state`) once saved."""
    res = train_global(
        module, n_items, step, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed,
        dist=ctx.dist, schedule=one_cycle_schedule(lr, 0.1), config={"stage": f"{index}-{round_}"}, lengths=lengths,
        description=description, quiet=ctx.quiet,
        checkpoint_dir=state_for_stage(ctx.dist, stage_state_dir(ctx, index, round_)),
        checkpoint_every=ctx.dist.checkpoint_every, autocast=autocast,
    )
    return res.log
