"""SFT of the reasoner with a *global* batch (stages 1 and 3): the same update on 1 process or on
many, DDP or FSDP2, resumable from a `train_state` checkpoint on another number of processes.

`loops.train_sft` gives each rank ``batch_size`` examples of its own shard, so a step's batch (and
the result) grows with the world. Here ``batch_size`` is the batch of a step over all ranks, run
by `global_loop.train_global` (the loop DPO and RG-CL share): each rank computes its rows of the
global batch, and the loss is the token-mean cross-entropy over the *global* batch (each rank's
token mean weighted by its share of the global label tokens). The learning-rate schedule is a
function of the global step (`lr_factor`), so a resumed run continues it where it stopped.

With the data sharded (``dist.data_sharded``) each rank's examples are its own and the loop
steps on its own batches (`global_loop.LocalRows`).

What is left between world sizes is float summation order (FSDP's reduce-scatter, padded
widths): losses agree to ~1e-6 relative (tests/unit/test_training_parallel.py).
"""

from __future__ import annotations

import contextlib
import functools
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rgalign.models.tokenizer import IGNORE_INDEX, encode_pairs
from rgalign.training import loops
from rgalign.training.distributed import DistInfo
from rgalign.training.global_loop import state_for_stage, train_global
from rgalign.training.loops import SFTResult, pair_lengths

WARMUP_FRACTION = 0.05  # of all steps, as loops.train_sft's one-cycle schedule
DIV_START, DIV_END = 25.0, 1e4  # OneCycleLR's defaults: start at lr/25, end at lr/25/1e4


def lr_factor(step: int, total: int) -> float:
    """One-cycle shape (linear warm-up, cosine decay) as a pure function of the step: no division
    by zero for any ``total`` >= 1, and nothing to save for a resume."""
    warm = max(1, math.ceil(WARMUP_FRACTION * total))
    start, end = 1.0 / DIV_START, 1.0 / (DIV_START * DIV_END)
    if step < warm:
        return start + (1.0 - start) * (step + 1) / warm
    rest = max(1, total - warm)
    t = min(1.0, (step - warm + 1) / rest)
    return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * t))


class LMLoss(nn.Module):
    """The reasoner's mean LM loss as a module ``forward``: DDP's and FSDP's hooks run on ``__call__``."""

    def __init__(self, reasoner: nn.Module) -> None:
        super().__init__()
        self.reasoner = reasoner

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.reasoner.lm_loss(input_ids, attention_mask, labels)


def sft_for_stage(dist: DistInfo, state_dir: Path):
    """The SFT loop a stage uses: `train_sft_global` under torchrun (the same update on any
    number of processes, DDP or FSDP2), with ``--checkpoint-every`` (a resumable state in
    ``state_dir`` every ``dist.checkpoint_every`` steps, removed by `drop_stage_state` once the
    stage is saved), or when ``state_dir`` holds a state to resume (one written by another number
    of processes); else `loops.train_sft`, so a plain one-process run's results do not move."""
    checkpoint_dir = state_for_stage(dist, state_dir)
    if not dist.enabled and checkpoint_dir is None:
        return loops.train_sft
    return functools.partial(train_sft_global, checkpoint_dir=checkpoint_dir, checkpoint_every=dist.checkpoint_every)


def drop_stage_state(dist: DistInfo, state_dir: Path) -> None:
    """Remove a finished stage's training state (rank 0)."""
    if dist.is_main and state_dir.is_dir():
        shutil.rmtree(state_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            state_dir.parent.rmdir()  # the run's train_state/ folder, once empty


def train_sft_global(
    reasoner: nn.Module,
    tokenizer,
    prompts: list[str],
    targets: list[str],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    max_len: int,
    seed: int,
    dist: DistInfo,
    description: str = "reasoner SFT",
    quiet: bool = False,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    stop_after: int | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> SFTResult:
    """Causal-LM SFT (loss on target tokens) over ``epochs`` passes in global batches of
    ``batch_size``, DDP or FSDP2 as ``dist.strategy`` says (`global_loop.train_global`).

    ``checkpoint_dir``: resume from the state there if any, and write it every
    ``checkpoint_every`` steps (0: only when stopping) and at the end. ``stop_after``: stop
    after this many steps in all (the schedule still spans every epoch): an interruption, for
    tests and for jobs with a time limit. The returned log holds every step's loss, the
    resumed ones included. ``autocast``: a context factory the forward passes run in (as
    `loops.train_sft`'s, e.g. bf16 autocast); the trainable parameters are those that require
    grad (LoRA adapters, or all).
    """

    n_items = len(prompts)
    if not prompts:  # the data sharded, a rank without examples: a blank stand-in it steps on at weight 0
        prompts, targets = [""], [""]

    def step(module: nn.Module, batch: np.ndarray, local: np.ndarray) -> tuple[torch.Tensor, float, dict[str, float]]:
        rows, dev = batch[local], next(module.parameters()).device
        enc = encode_pairs(tokenizer, [prompts[i] for i in rows], [targets[i] for i in rows], max_len)
        mean = module(enc["input_ids"].to(dev), enc["attention_mask"].to(dev), enc["labels"].to(dev))
        n_tokens = float((enc["labels"][:, 1:] != IGNORE_INDEX).sum())
        return mean, n_tokens, {"lm_loss": float(torch.nan_to_num(mean.detach().float()))}

    res = train_global(
        LMLoss(reasoner), n_items, step, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=0.01,
        seed=seed, dist=dist, schedule=functools.partial(_rate, lr), config={"max_len": max_len},
        lengths=pair_lengths(tokenizer, prompts, targets), description=description, quiet=quiet,
        checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, stop_after=stop_after, autocast=autocast,
    )
    log = res.log
    final = float(np.mean([r["lm_loss"] for r in log.rows[-20:]])) if log.rows else math.nan
    return SFTResult(res.seconds, res.items / res.seconds, res.units / res.seconds, final, log)


def _rate(lr: float, opt: torch.optim.Optimizer, total: int) -> Callable[[int], None]:
    """SFT's schedule for `train_global`: ``lr`` times `lr_factor` of the step."""

    def apply(step: int) -> None:
        for g in opt.param_groups:
            g["lr"] = lr * lr_factor(step, total)

    return apply
