"""SFT of the reasoner with a *global* batch: the same update on 1 process or on many, DDP or FSDP2,
resumable from a `train_state` checkpoint on another number of processes.

`loops.train_sft` gives each rank ``batch_size`` examples of its own shard, so a step's batch (and
the result) grows with the world. Here ``batch_size`` is the batch of a step over all ranks: the
epoch's order and its batches are drawn from one seeded generator, identical on every rank, and
rank ``r`` takes rows ``r, r + world, ...`` of each batch (`distributed.rank_slice`). The loss is
the token-mean cross-entropy over the *global* batch: each rank's token sum divided by the global
token count (one all-reduce of a number), times ``world`` because DDP and FSDP average gradients
over ranks. A rank whose slice of a short last batch is empty runs one row at weight 0, so every
rank joins the collectives. The learning-rate schedule is a function of the global step, so a
resumed run continues it where it stopped.

What is left between world sizes is float summation order (FSDP's reduce-scatter, padded
widths): losses agree to ~1e-6 relative (tests/unit/test_training_parallel.py).
"""

from __future__ import annotations

import contextlib
import functools
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rgalign.errors import TrainError
from rgalign.models.tokenizer import IGNORE_INDEX, encode_pairs
from rgalign.training import loops, train_state
from rgalign.training.distributed import DistInfo, all_reduce_sum, rank_slice, steps_per_epoch as steps_per_epoch_of
from rgalign.training.loops import LossLog, SFTResult, epoch_batches, pair_lengths, progress
from rgalign.training.parallel import wrap_for_training

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
    resumable = bool(dist.checkpoint_every) or train_state.exists(state_dir)
    if not dist.enabled and not resumable:
        return loops.train_sft
    return functools.partial(train_sft_global, checkpoint_dir=state_dir if resumable else None,
                             checkpoint_every=dist.checkpoint_every)


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
    ``batch_size``, DDP or FSDP2 as ``dist.strategy`` says (`parallel.wrap_for_training`).

    ``checkpoint_dir``: resume from the state there if any, and write it every
    ``checkpoint_every`` steps (0: only when stopping) and at the end. ``stop_after``: stop
    after this many steps in all (the schedule still spans every epoch): an interruption, for
    tests and for jobs with a time limit. The returned log holds every step's loss, the
    resumed ones included. ``autocast``: a context factory the forward passes run in (as
    `loops.train_sft`'s, e.g. bf16 autocast); the trainable parameters are those that require
    grad (LoRA adapters, or all).
    """
    # the latent projection gets no gradient from the LM loss: DDP must be told
    wrap = wrap_for_training(LMLoss(reasoner), dist, find_unused=True, release_original=True)
    opt = torch.optim.AdamW(list(wrap.parameters()), lr=lr, weight_decay=0.01)
    dev = next(wrap.module.parameters()).device
    lengths = pair_lengths(tokenizer, prompts, targets) if prompts else None
    config = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "max_len": max_len, "seed": seed,
              "examples": len(prompts)}
    if dist.data_sharded:
        # each rank draws batches of ~batch_size / world from its own shard (the global batch is
        # still ~batch_size); its state resumes only on the same shards, so the same world size
        batch_size = math.ceil(batch_size / dist.world_size)
        steps_per_epoch = max(1, steps_per_epoch_of(len(prompts), batch_size, dist))
        config["data_shards"] = dist.world_size
    else:
        steps_per_epoch = max(1, math.ceil(len(prompts) / batch_size))
    total = max(1, epochs * steps_per_epoch)
    rng = np.random.default_rng(seed)
    log = LossLog()
    step = n_examples = n_tokens = 0
    rng_epoch = 0  # the epoch whose order `rng` draws next
    if checkpoint_dir is not None and train_state.exists(checkpoint_dir):
        meta = train_state.load_train_state(checkpoint_dir, wrap.module, opt, dist)
        if meta["config"] != config:
            raise TrainError(f"{checkpoint_dir}: a training state of another run ({meta['config']}); "
                             f"this one is {config}: use another folder")
        step, n_examples, n_tokens = meta["step"], meta["examples_seen"], meta["tokens_seen"]
        rng.bit_generator.state, rng_epoch = meta["epoch_rng"], meta["rng_epoch"]
        log.rows = meta["losses"]
    last = total if stop_after is None else min(total, stop_after)
    start, epoch_rng = step, rng.bit_generator.state

    def save() -> None:
        meta = {"config": config, "step": step, "examples_seen": n_examples, "tokens_seen": n_tokens,
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
                order = rng.permutation(len(prompts))
                batches = epoch_batches(order, batch_size, steps_per_epoch, rng, lengths, pad_empty=dist.data_sharded)
                rng_epoch += 1
            for batch in batches[first:]:
                loss = _step(wrap, opt, tokenizer, prompts, targets, batch, max_len, dist, dev, lr * lr_factor(step, total),
                             autocast)
                step += 1
                n_examples += len(batch)
                n_tokens += loss[1]
                log.add(epoch=epoch, step=step - 1, lm_loss=loss[0])
                speed = n_examples / max(time.perf_counter() - t0, 1e-9)
                bar.update(task, advance=1, info=f"loss {loss[0]:.3f} {speed:,.1f} ex/s")
                if checkpoint_dir is not None and step < last and checkpoint_every and step % checkpoint_every == 0:
                    save()
                if step >= last:
                    break
    if checkpoint_dir is not None and step > start:
        save()
    wrap.finish()
    reasoner.eval()
    seconds = max(time.perf_counter() - t0, 1e-9)
    final = float(np.mean([r["lm_loss"] for r in log.rows[-20:]])) if log.rows else math.nan
    return SFTResult(seconds, n_examples / seconds, n_tokens / seconds, final, log)


def _step(wrap, opt, tokenizer, prompts, targets, batch, max_len, dist, dev, lr, autocast) -> tuple[float, int]:
    """One optimizer step on the global ``batch``: (its token-mean loss, its label tokens)."""
    local, weight = rank_slice(batch, dist), 1.0
    if len(local) == 0:
        local, weight = batch[:1], 0.0
    # [""]: a sharded log's rank without examples steps on a blank pair (weight 0)
    enc = encode_pairs(tokenizer, [prompts[i] for i in local] or [""], [targets[i] for i in local] or [""], max_len)
    n_local = float((enc["labels"][:, 1:] != IGNORE_INDEX).sum()) * weight
    n_global = all_reduce_sum(n_local, dist)
    for g in opt.param_groups:
        g["lr"] = lr
    with autocast():
        mean = wrap.module(enc["input_ids"].to(dev), enc["attention_mask"].to(dev), enc["labels"].to(dev))
    mean = torch.nan_to_num(mean.float())  # a row whose target was cut away has no label token
    scale = n_local * dist.world_size / max(n_global, 1.0)
    opt.zero_grad(set_to_none=True)
    (mean * scale).backward()
    torch.nn.utils.clip_grad_norm_(list(wrap.parameters()), 1.0)
    opt.step()
    total = all_reduce_sum(float(mean.detach()) * n_local, dist)
    return total / max(n_global, 1.0), int(n_global)
