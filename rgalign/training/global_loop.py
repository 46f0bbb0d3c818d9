"""The reasoner's training loop over *global* batches, shared by its SFT (stages 1 and 3,
`global_sft`), DPO (stage 4) and RG-CL (stage 5): the same update on 1 process or on many, DDP or
FSDP2 (`parallel.wrap_for_training`), resumable from a `train_state` on another number of processes.

What a stage brings is its loss, as a ``step(module, batch, local)`` function: ``batch`` is the
global batch (item indices, the same on every rank), ``local`` the positions in it that this rank
computes (`distributed.rank_slice`: ``rank, rank + world, ...``). It returns the *mean* loss over
its local units (label tokens for SFT, pairs for DPO, anchors for InfoNCE) with its graph, the
number of those units, and the floats to log as local means. The loop weights each rank's mean by
its share of the global units (one all-reduce of a number) and by ``world`` (DDP and FSDP average
gradients over ranks), so the gradient is that of the global mean; the logged floats are global
means too. A rank whose slice of a short last batch is empty runs one item at weight 0, so every
rank joins the collectives.

With the log read by shard (``dist.data_sharded``, `rgalign.training.shard_data`) the items are
each rank's own, not indices into one shared list: a step's "slice" of the global batch is then
the rank's next local batch (``ceil(batch_size / world)`` rows of its own permutation, drawn per
rank and epoch), every rank takes the largest rank's number of steps (all-reduced), and a rank past
its own batches steps on its item 0 at weight 0 (a stage whose rank may hold no item passes a
stand-in item 0). The loss weights are the same as above (the rank's units over the all-reduced
units of the step), so an update is the mean over the step's rows on every rank. Which of the two
the loop runs is `data_source`'s choice, in this one place; one process runs the first either way.

The epoch's order and its batches come from one seeded generator, identical on every rank
(`loops.epoch_batches`, of similar lengths when ``lengths`` is given); the rate is a function of
the global step (``schedule``), so a resumed run continues where it stopped. On one process the
loop takes the very steps `alignment.common`'s former per-rank loop took (same draws, same
optimizer, a scale of exactly 1), so a one-process run's results do not move.

Example (stage 4)::

    res = train_global(_SequenceLogprobs(policy), len(pairs), dpo_step, epochs=2, batch_size=8,
                       lr=5e-6, weight_decay=0.0, seed=seed, dist=ctx.dist,
                       schedule=one_cycle_schedule(lr, 0.1), config={"stage": "dpo"})
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rgalign.errors import TrainError
from rgalign.training import train_state
from rgalign.training.distributed import DistInfo, all_reduce_max, all_reduce_sum, rank_slice
from rgalign.training.loops import LossLog, epoch_batches, progress
from rgalign.training.parallel import wrap_for_training
from rgalign.training.schedule import one_cycle

# step(module, global batch, local positions) -> (local mean loss, local units, local means to log)
StepFn = Callable[[nn.Module, np.ndarray, np.ndarray], tuple[torch.Tensor, float, dict[str, float]]]
# schedule(optimizer, total steps) -> apply(step): sets the rate (and beta1) of 0-based ``step``
Schedule = Callable[[torch.optim.Optimizer, int], Callable[[int], None]]


def one_cycle_schedule(lr: float, pct_start: float) -> Schedule:
    """`schedule.OneCycle` (rate and AdamW's beta1) as a function of the step: what stages 4 and 5
    always used, now resumable at any step."""
    return lambda opt, total: one_cycle(opt, max_lr=lr, total_steps=total, pct_start=pct_start).seek


@dataclass(frozen=True)
class GlobalRows:
    """Items shared by every rank: one global batch per step, each rank computes its
    `distributed.rank_slice` of it (empty: item 0 at weight 0)."""

    n_items: int
    batch_size: int
    dist: DistInfo

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.n_items / self.batch_size))

    def draw(self, rng: np.random.Generator, epoch: int, lengths: np.ndarray | None) -> list[np.ndarray]:
        return epoch_batches(rng.permutation(self.n_items), self.batch_size, self.steps_per_epoch, rng, lengths)

    def local(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """(the batch ``step_fn`` sees, this rank's positions in it, its weight)."""
        local = rank_slice(np.arange(len(batch)), self.dist)
        return (batch, local, 1.0) if len(local) else (batch, np.zeros(1, dtype=np.int64), 0.0)

    def rows(self, batch: np.ndarray) -> int:
        return len(batch)  # the global batch: the same on every rank


@dataclass(frozen=True)
class LocalRows:
    """Each rank's own items (the data sharded): a step's slice is the rank's next batch of
    ``ceil(batch_size / world)`` of them, drawn from a generator of (seed, rank, epoch), so a state
    resumes on the same shards (the same world size); every rank takes the largest rank's steps."""

    n_items: int
    batch_size: int
    dist: DistInfo
    seed: int
    steps_per_epoch: int

    @classmethod
    def make(cls, n_items: int, batch_size: int, dist: DistInfo, seed: int) -> LocalRows:
        local = math.ceil(batch_size / dist.world_size)
        return cls(n_items, local, dist, seed, max(1, all_reduce_max(math.ceil(n_items / local), dist)))

    def draw(self, rng: np.random.Generator, epoch: int, lengths: np.ndarray | None) -> list[np.ndarray]:
        own = np.random.default_rng([self.seed, self.dist.rank, epoch])
        return epoch_batches(own.permutation(self.n_items), self.batch_size, self.steps_per_epoch, own, lengths,
                             pad_empty=True)

    def local(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        if len(batch) == 0:  # past this rank's items: its item 0 (a stand-in where it has none)
            return np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64), 0.0
        return batch, np.arange(len(batch)), 1.0

    def rows(self, batch: np.ndarray) -> int:
        return int(all_reduce_sum(float(len(batch)), self.dist))


def data_source(n_items: int, batch_size: int, dist: DistInfo, seed: int) -> GlobalRows | LocalRows:
    """Global indices sliced by rank, or (the data sharded over 2+ processes) each rank's own."""
    if dist.data_sharded and dist.enabled:
        return LocalRows.make(n_items, batch_size, dist, seed)
    return GlobalRows(n_items, batch_size, dist)


@dataclass(frozen=True)
class LoopResult:
    log: LossLog
    seconds: float
    items: int  # items trained on, over all ranks and epochs (examples, pairs, requests)
    units: float  # the loss's units over all ranks (label tokens, pairs, anchors)


def state_for_stage(dist: DistInfo, state_dir: Path) -> Path | None:
    """Where a stage keeps its resumable state: ``state_dir`` with ``--checkpoint-every`` or when
    it holds a state to resume (one written by another number of processes), else None."""
    return state_dir if dist.checkpoint_every or train_state.exists(state_dir) else None


def train_global(
    module: nn.Module,
    n_items: int,
    step_fn: StepFn,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    dist: DistInfo,
    schedule: Schedule,
    config: dict[str, Any],
    lengths: np.ndarray | None = None,
    description: str = "reasoner",
    quiet: bool = False,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    stop_after: int | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> LoopResult:
    """Train ``module`` (what ``step_fn`` calls; its parameters that require grad are trained:
    LoRA adapters, or all) over ``epochs`` passes of ``n_items`` in global batches of
    ``batch_size``. The gradients are clipped to norm 1 (AdamW).

    ``config``: what identifies the run in a saved state besides the loop's own settings (a state
    of another run is refused). ``checkpoint_dir``: resume from the state there if any, write it
    every ``checkpoint_every`` steps (0: only when stopping) and at the end. ``stop_after``: stop
    after this many steps in all (the schedule still spans every epoch): an interruption, for
    tests and for jobs with a time limit. The returned log holds every step's floats, the
    resumed ones included. ``step_fn`` runs inside ``autocast()`` (bf16, `finetune.autocast_for`).
    On return the trained weights are in ``module`` (gathered back from the shards under FSDP),
    in eval mode.
    """
    # find_unused: a loss leaves some parameters without gradient (the LM loss the latent
    # projection, InfoNCE the LM head): DDP must be told, FSDP2 needs no flag
    wrap = wrap_for_training(module, dist, find_unused=True, release_original=True)
    opt = torch.optim.AdamW(list(wrap.parameters()), lr=lr, weight_decay=weight_decay)
    source = data_source(n_items, batch_size, dist, seed)
    steps_per_epoch = source.steps_per_epoch
    total = max(1, epochs * steps_per_epoch)
    set_rate = schedule(opt, total)
    config = {**config, "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "examples": n_items}
    if isinstance(source, LocalRows):  # a rank's own items: its state resumes on the same shards only
        config["data_shards"] = dist.world_size
    rng = np.random.default_rng(seed)
    log = LossLog()
    step = items = 0
    units = 0.0
    rng_epoch = 0  # the epoch whose order `rng` draws next
    if checkpoint_dir is not None and train_state.exists(checkpoint_dir):
        meta = train_state.load_train_state(checkpoint_dir, wrap.module, opt, dist)
        if meta["config"] != config:
            raise TrainError(f"{checkpoint_dir}: a training state of another run ({meta['config']}); "
                             f"this one is {config}: use another folder")
        step, items, units = meta["step"], meta["examples_seen"], meta["tokens_seen"]
        rng.bit_generator.state, rng_epoch = meta["epoch_rng"], meta["rng_epoch"]
        log.rows = meta["losses"]
    last = total if stop_after is None else min(total, stop_after)
    start, epoch_rng = step, rng.bit_generator.state
    batches: list[np.ndarray] = []

    def save() -> None:
        meta = {"config": config, "step": step, "examples_seen": items, "tokens_seen": units,
                "epoch_rng": epoch_rng, "rng_epoch": rng_epoch - 1, "losses": log.rows}
        train_state.save_train_state(checkpoint_dir, wrap.module, opt, meta, dist)

    t0 = time.perf_counter()
    wrap.module.train()
    with progress(disable=quiet or not dist.is_main) as bar:
        task = bar.add_task(description, total=total, completed=step, info="")
        while step < last:
            epoch, first = divmod(step, steps_per_epoch)
            while rng_epoch <= epoch:  # a state saved at an epoch's end replays that epoch's draws
                epoch_rng = rng.bit_generator.state  # a resume redraws this epoch's order from here
                batches = source.draw(rng, rng_epoch, lengths)
                rng_epoch += 1
            for batch in batches[first:]:
                set_rate(step)
                stats, n_global = _step(wrap, opt, step_fn, source.local(batch), dist, autocast)
                step += 1
                items += source.rows(batch)
                units += n_global
                log.add(epoch=epoch, step=step - 1, **stats)
                speed = items / max(time.perf_counter() - t0, 1e-9)
                shown = " ".join(f"{name} {v:.3f}" for name, v in list(stats.items())[:2])
                bar.update(task, advance=1, info=f"{shown} {speed:,.1f} ex/s")
                if checkpoint_dir is not None and step < last and checkpoint_every and step % checkpoint_every == 0:
                    save()
                if step >= last:
                    break
    if checkpoint_dir is not None and step > start:
        save()
    wrap.finish()
    module.eval()
    return LoopResult(log, max(time.perf_counter() - t0, 1e-9), items, units)


def _step(wrap, opt, step_fn: StepFn, part: tuple[np.ndarray, np.ndarray, float], dist: DistInfo,
          autocast) -> tuple[dict[str, float], float]:
    """One optimizer step on this rank's ``part`` of a global batch (batch, positions, weight):
    (the step's global means to log, its global units)."""
    batch, local, weight = part
    with autocast():
        mean, count, stats = step_fn(wrap.module, batch, local)
    n_local = float(count) * weight
    n_global = all_reduce_sum(n_local, dist)
    # nan_to_num: a mean over no unit (an SFT row whose target was cut away) is NaN; its weight is 0
    mean = torch.nan_to_num(mean.float())
    scale = n_local * dist.world_size / max(n_global, 1.0)  # exactly 1.0 on one process
    opt.zero_grad(set_to_none=True)
    (mean * scale).backward()
    torch.nn.utils.clip_grad_norm_(list(wrap.parameters()), 1.0)
    opt.step()
    return _global_means(stats, n_local, n_global, dist), n_global


def _global_means(stats: dict[str, float], n_local: float, n_global: float, dist: DistInfo) -> dict[str, float]:
    """Each local mean made the mean over the global batch (one all-reduce for all of them);
    on one process the values themselves."""
    if not dist.enabled:
        return {k: float(v) if n_local else 0.0 for k, v in stats.items()}
    sums = torch.tensor([float(v) * n_local if n_local else 0.0 for v in stats.values()], dtype=torch.float64)
    torch.distributed.all_reduce(sums)
    return {k: float(s) / max(n_global, 1.0) for k, s in zip(stats, sums.tolist())}
