"""The two training loops every stage is made of: a ranker over request slates, and SFT of the
reasoner on (prompt, target) pairs. Both are DDP-aware (see :mod:`distributed`), seeded, and show
a progress bar with the loss and the speed."""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from rgalign import metrics
from rgalign.data.requests import RequestArrays
from rgalign.metrics.merge import group_codes
from rgalign.models.losses import ranker_loss
from rgalign.models.tokenizer import encode_pairs
from rgalign.training.distributed import DistInfo, all_gather_object, batch_weight, shard, steps_per_epoch as epoch_steps
from rgalign.training.schedule import linear_warmup, one_cycle


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` intra-op threads. The rankers' ops are small (a 256-request batch is
    ~100 KB of activations): a second OpenMP thread buys little and, when the other core is busy,
    its spin-waits made a training step 20x slower (0.58 s vs 0.03 s, measured on 2 cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


LENGTH_GROUP = 16  # batches' worth of examples sorted by length together (see `epoch_batches`)


def epoch_batches(
    order: np.ndarray, batch_size: int, steps: int, rng: np.random.Generator, lengths: np.ndarray | None = None,
    pad_empty: bool = False,
) -> list[np.ndarray]:
    """One epoch's ``steps`` batches of this rank's shuffled ``order``.

    Without ``lengths``: consecutive slices. With ``lengths`` (tokens per example), each run of
    `LENGTH_GROUP` batches' worth of examples is sorted by length before it is cut, and the
    batches are then shuffled: a batch pads little (the warm-up's padded width fell from ~90
    tokens to ~62, 1.6x faster a step) while what an epoch sees, and in which order of batches,
    stays random. Ranks whose shard is one batch short repeat their first batch, so every rank
    takes ``steps`` steps; the shuffle draws ``steps`` numbers on every rank, so the shared ``rng``
    stays in step across ranks. ``pad_empty`` (the data sharded: a rank may be many batches short)
    pads with empty batches instead, which the loops run at weight 0 (`distributed.batch_weight`).
    """
    if lengths is not None:
        chunk = batch_size * LENGTH_GROUP
        parts = [order[i : i + chunk] for i in range(0, len(order), chunk)]
        order = np.concatenate([p[np.argsort(lengths[p], kind="stable")] for p in parts]) if parts else order
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    batches += [order[:0] if pad_empty else order[:batch_size]] * (steps - len(batches))
    batches = batches[:steps]
    if lengths is not None:
        batches = [batches[i] for i in rng.permutation(steps)]
    return batches


def progress(disable: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=disable,
        transient=False,
    )


@dataclass
class LossLog:
    """Per-step losses of one stage (written as CSV beside the checkpoint)."""

    rows: list[dict[str, float]] = field(default_factory=list)

    def add(self, **values: float) -> None:
        self.rows.append(values)

    def to_csv(self) -> str:
        if not self.rows:
            return ""
        keys = list(dict.fromkeys(k for r in self.rows for k in r))  # e.g. valid_gauc: on check rows only
        lines = [",".join(keys)] + [",".join(f"{r.get(k, float('nan')):.6g}" for k in keys) for r in self.rows]
        return "\n".join(lines) + "\n"


# A ranker forward: (model, request batch, extra rows or None) -> logits (B, S) over the shown slate.
RankerForward = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]


def slate_batch(arrays: RequestArrays, idx: np.ndarray, query: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Tensors of requests ``idx``: cat (B,Fc), num (B,Fn), shown (B,S) (pads -> 0, masked),
    labels (B,S), mask (B,S), and query (B,d) when given."""
    b = {
        "cat": torch.from_numpy(arrays.cat[idx]),
        "num": torch.from_numpy(arrays.num[idx]),
        "shown": torch.from_numpy(np.maximum(arrays.shown[idx], 0)),
        "labels": torch.from_numpy(arrays.labels[idx]),
        "mask": torch.from_numpy(arrays.mask[idx]),
    }
    if query is not None:
        b["query"] = query[torch.from_numpy(idx)]
    return b


EVAL_BATCH = 1024  # requests per scoring call: a (1024, 200) score matrix is small


@torch.no_grad()
def slate_logits(model: nn.Module, forward, arrays: RequestArrays, query: torch.Tensor | None) -> np.ndarray:
    """(R, S) logits over each request's shown slate (padded slots hold garbage; use the mask)."""
    was = model.training
    model.eval()
    out = []
    for i in range(0, len(arrays), EVAL_BATCH):
        idx = np.arange(i, min(i + EVAL_BATCH, len(arrays)))
        out.append(forward(model, slate_batch(arrays, idx, query)).numpy())
    model.train(was)
    return np.concatenate(out) if out else np.zeros((0, arrays.shown.shape[1]), np.float32)


@dataclass(frozen=True)
class RankerResult:
    best_epoch: int  # the check whose weights were kept (0: the starting weights); see `train_ranker`
    best_valid_gauc: float
    seconds: float
    impressions_per_s: float
    log: LossLog
    checks: int = 0  # valid-GAUC checks made after training steps
    stopped_early: bool = False
    steps: int = 0
    start_valid_gauc: float = math.nan  # check 0: the starting weights
    # the best check's valid GAUC gain over the start and that gain's standard error (NaN when
    # the best check was the start); ``start_kept``: the gain was within ``min_gain_se`` of them,
    # so the starting weights were kept (see `EarlyStopping`)
    gain_se: float = math.nan
    start_kept: bool = False
    gain: float = math.nan  # the best check's valid GAUC gain over the start, kept or refused


@dataclass(frozen=True)
class EarlyStopping:
    """How long a ranker trains: until its valid GAUC stops improving, not a fixed count.

    The valid GAUC is checked every epoch, or every ``min_check_steps`` steps where an epoch is
    shorter (a small log's epoch can be a handful of steps, too few to tell a trend from noise).
    A check that does not beat the best so far sends training back to the best weights at half
    the learning rate; ``patience`` such checks in a row stop training;
    ``max_epochs`` bounds it. The best check's weights are restored,
    including the starting weights (check 0), so a ranker never ends below where it started.

    A ranker starts from a prior (item popularity, or the text prior, as its intent bias): it
    leaves it only on evidence. The best check replaces the starting weights only when its valid
    GAUC gain is more than ``min_gain_se`` standard errors of that gain (paired over the valid
    requests, `metrics.gauc_difference`). On a small valid split a gain of a few hundredths of a
    point is which requests happened to be drawn (MovieLens-100K: 250 valid requests, a +0.04 pt
    gain over popularity lost 0.23 pt on test); on a large one the standard error is small and
    the gate costs nothing. ``min_gain_se`` 0 keeps any gain.
    """

    max_epochs: int
    patience: int = 3
    min_gain_se: float = 1.0
    min_check_steps: int = 25
    warmup_fraction: float = 0.5  # of the first check interval: linear warm-up of the rate

    def check_steps(self, steps_per_epoch: int) -> int:
        return max(steps_per_epoch, self.min_check_steps)

    def max_steps(self, steps_per_epoch: int) -> int:
        return max(self.max_epochs * steps_per_epoch, self.check_steps(steps_per_epoch))


def train_ranker(
    model: nn.Module,
    forward: RankerForward,
    train: RequestArrays,
    valid: RequestArrays,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    alpha_bce: float,
    seed: int,
    dist: DistInfo,
    train_query: torch.Tensor | None = None,
    valid_query: torch.Tensor | None = None,
    previous: nn.Module | None = None,
    beta_kl: float = 0.0,
    description: str = "ranker",
    quiet: bool = False,
    patience: int = 3,
    min_check_steps: int = 25,
    min_gain_se: float = 1.0,
) -> RankerResult:
    """ListNet + BCE (+ KL to ``previous``) over each request's slate, early-stopped on the valid
    GAUC (see `EarlyStopping`; ``epochs`` is the most it may train); the best check's weights are
    loaded back into ``model``, or the starting ones when the best gains too little over them."""
    stop = EarlyStopping(max_epochs=epochs, patience=patience, min_check_steps=min_check_steps,
                         min_gain_se=min_gain_se)
    with torch_threads(1):
        return _train_ranker(model, forward, train, valid, stop=stop, batch_size=batch_size, lr=lr,
                             weight_decay=weight_decay, alpha_bce=alpha_bce, seed=seed, dist=dist,
                             train_query=train_query, valid_query=valid_query, previous=previous,
                             beta_kl=beta_kl, description=description, quiet=quiet)


def _train_ranker(model, forward, train, valid, *, stop, batch_size, lr, weight_decay, alpha_bce, seed, dist,
                  train_query, valid_query, previous, beta_kl, description, quiet) -> RankerResult:
    ddp_model = _wrap(model, dist)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    steps_per_epoch = epoch_steps(len(train), batch_size, dist)
    check_every = stop.check_steps(steps_per_epoch)
    max_steps = stop.max_steps(steps_per_epoch)
    warmup = int(stop.warmup_fraction * check_every)
    scale = 1.0  # halved at every check without improvement

    def set_lr(step: int) -> None:
        for g in opt.param_groups:
            g["lr"] = lr * scale * linear_warmup(step, warmup)

    def valid_gauc() -> float:
        logits = slate_logits(model, forward, valid, valid_query)
        return _slate_gauc(valid, logits, dist)  # the same value on every rank: one stop decision

    log = LossLog()
    start_logits = slate_logits(model, forward, valid, valid_query)
    best = start = (0, _slate_gauc(valid, start_logits, dist), copy.deepcopy(model.state_dict()))
    n_impressions = step = checks = bad = 0
    stopped = False
    t0 = time.perf_counter()
    with progress(disable=quiet or not dist.is_main) as bar:
        task = bar.add_task(description, total=max_steps, info="")
        epoch = 0
        while step < max_steps and not stopped:
            model.train()
            order = shard(rng.permutation(len(train)), dist)
            for i in range(steps_per_epoch):
                idx = order[i * batch_size : (i + 1) * batch_size]
                if len(idx) == 0 and not dist.data_sharded:
                    idx = order[:batch_size]  # keeps step counts equal across ranks
                # the data sharded: a rank past its own batches steps on a stand-in at weight 0
                weight = batch_weight(len(idx), dist)
                b = slate_batch(train, idx, train_query) if len(idx) else _stand_in(valid, train, valid_query, train_query)
                set_lr(step)
                logits = forward(ddp_model, b)
                prev = None
                if previous is not None:
                    with torch.no_grad():
                        prev = forward(previous, b)
                loss, parts = ranker_loss(logits, b["labels"], b["mask"], prev, alpha_bce=alpha_bce, beta_kl=beta_kl)
                if weight != 1.0:
                    loss = torch.nan_to_num(loss) * weight
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                opt.step()
                step += 1
                n_impressions += int(b["mask"].sum()) if len(idx) else 0
                log.add(epoch=epoch, step=len(log.rows), **parts)
                speed = n_impressions * dist.world_size / max(time.perf_counter() - t0, 1e-9)
                bar.update(task, advance=1, info=f"epoch {epoch + 1} loss {parts['total']:.4f} {speed:,.0f} imp/s")
                if step % check_every == 0 or step == max_steps:
                    checks += 1
                    gauc = valid_gauc()
                    log.rows[-1]["valid_gauc"] = gauc
                    model.train()
                    if gauc > best[1]:
                        best, bad = (checks, gauc, copy.deepcopy(model.state_dict())), 0
                    else:
                        bad += 1
                        if bad >= stop.patience:
                            stopped = True
                            break
                        # backtrack: from the best weights again, at half the rate (a rate too
                        # high for this data overshoots the prior the ranker starts from; it is
                        # the rate that adapts, not a schedule fixed in advance). The optimizer's
                        # moments are kept: fresh ones make Adam's first steps lr-sized in every
                        # weight, a jump that undid what the lower rate was to refine
                        scale *= 0.5
                        model.load_state_dict(best[2])
                if step >= max_steps:
                    break
            epoch += 1
        bar.update(task, completed=max_steps)
    model.load_state_dict(best[2])
    gain_se, start_kept, gain = math.nan, False, float(best[1] - start[1])
    if best[0] != 0:
        _, gain_se = _slate_gauc_difference(valid, slate_logits(model, forward, valid, valid_query), start_logits, dist)
        if stop.min_gain_se > 0 and not gain > stop.min_gain_se * gain_se:
            best, start_kept = start, True  # a gain within the noise of this valid split: stay at the prior
            model.load_state_dict(best[2])
    model.eval()
    seconds = time.perf_counter() - t0
    return RankerResult(best[0], float(best[1]), seconds, n_impressions * dist.world_size / max(seconds, 1e-9), log,
                        checks=checks, stopped_early=stopped, steps=step, start_valid_gauc=float(start[1]),
                        gain_se=gain_se, start_kept=start_kept, gain=gain)


def _shown(arrays: RequestArrays, dist: DistInfo, *logits: np.ndarray) -> tuple[np.ndarray, ...]:
    """(labels, groups, *scores) of the shown impressions; every rank's (gathered) when the data is
    sharded."""
    m = arrays.mask
    groups = np.broadcast_to(arrays.groups[:, None], m.shape)[m]
    cols = (arrays.labels[m], group_codes(groups) if dist.data_sharded else groups, *(x[m] for x in logits))
    if dist.data_sharded:
        parts = all_gather_object(cols, dist)
        cols = tuple(np.concatenate([p[i] for p in parts]) for i in range(len(cols)))
    return cols


def _slate_gauc(arrays: RequestArrays, logits: np.ndarray, dist: DistInfo) -> float:
    """GAUC of the shown impressions; of every rank's (gathered) when the data is sharded."""
    labels, groups, scores = _shown(arrays, dist, logits)
    value = metrics.gauc(labels, scores, groups) if len(labels) else math.nan
    return -math.inf if math.isnan(value) else value


def _slate_gauc_difference(arrays: RequestArrays, logits_a: np.ndarray, logits_b: np.ndarray,
                           dist: DistInfo) -> tuple[float, float]:
    """`metrics.gauc_difference` of two scorings of the shown impressions (gathered when sharded)."""
    labels, groups, a, b = _shown(arrays, dist, logits_a, logits_b)
    return metrics.gauc_difference(labels, a, b, groups) if len(labels) else (math.nan, math.nan)


def _stand_in(valid: RequestArrays, train: RequestArrays, valid_query, train_query) -> dict[str, torch.Tensor]:
    """One request's tensors for a rank without training requests to step on at weight 0: a valid
    request where the rank has one, else a blank one (codes 0, nothing shown, masked)."""
    if len(valid):
        return slate_batch(valid, np.zeros(1, np.int64), valid_query)
    b = {"cat": torch.zeros(1, train.cat.shape[1], dtype=torch.int64), "num": torch.zeros(1, train.num.shape[1]),
         "shown": torch.zeros(1, 1, dtype=torch.int64), "labels": torch.zeros(1, 1), "mask": torch.ones(1, 1, dtype=torch.bool)}
    if train_query is not None:
        b["query"] = torch.zeros(1, train_query.shape[1])
    return b


@dataclass(frozen=True)
class SFTResult:
    seconds: float
    examples_per_s: float
    tokens_per_s: float
    final_loss: float
    log: LossLog


def train_sft(
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
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> SFTResult:
    """Causal-LM SFT: loss on the target tokens only (prompt tokens are labelled -100). The
    forward passes run inside ``autocast()`` (bf16 autocast, see `finetune.autocast_for`); the
    trainable parameters are those that require grad (LoRA adapters and the head, or all)."""
    lm = _wrap(_LMLoss(reasoner), dist, find_unused=True)  # the latent projection gets no gradient here
    params = [p for p in reasoner.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    lengths = pair_lengths(tokenizer, prompts, targets) if prompts else None
    steps_per_epoch = epoch_steps(len(prompts), batch_size, dist)
    total = max(1, epochs * steps_per_epoch)
    sched = one_cycle(opt, max_lr=lr, total_steps=total, pct_start=0.05)
    log = LossLog()
    n_examples = n_tokens = 0
    t0 = time.perf_counter()
    reasoner.train()
    with progress(disable=quiet or not dist.is_main) as bar:
        task = bar.add_task(description, total=total, info="")
        for epoch in range(epochs):
            order = shard(rng.permutation(len(prompts)), dist)
            for idx in epoch_batches(order, batch_size, steps_per_epoch, rng, lengths, pad_empty=dist.data_sharded):
                # a rank past its examples (the data sharded) steps on a blank pair at weight 0
                enc = encode_pairs(tokenizer, [prompts[i] for i in idx] or [""], [targets[i] for i in idx] or [""], max_len)
                weight = batch_weight(len(idx), dist)
                with autocast():
                    loss = lm(enc["input_ids"], enc["attention_mask"], enc["labels"])
                if weight != 1.0:
                    loss = torch.nan_to_num(loss) * weight
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                n_examples += len(idx)
                n_tokens += int(enc["attention_mask"].sum())
                log.add(epoch=epoch, step=len(log.rows), lm_loss=float(loss.detach()))
                speed = n_examples * dist.world_size / max(time.perf_counter() - t0, 1e-9)
                bar.update(task, advance=1, info=f"loss {float(loss.detach()):.3f} {speed:,.1f} ex/s")
    reasoner.eval()
    seconds = time.perf_counter() - t0
    final = float(np.mean([r["lm_loss"] for r in log.rows[-20:]])) if log.rows else math.nan
    return SFTResult(seconds, n_examples * dist.world_size / seconds, n_tokens * dist.world_size / seconds, final, log)


def pair_lengths(tokenizer, prompts: list[str], *targets: list[str]) -> np.ndarray:
    """Tokens of each prompt plus its longest target: the padded width it asks of a batch."""
    n = np.array([len(ids) for ids in tokenizer(list(prompts), verbose=False)["input_ids"]], dtype=np.int64)
    extra = np.zeros_like(n)
    for t in targets:
        extra = np.maximum(extra, [len(ids) for ids in tokenizer(list(t), add_special_tokens=False, verbose=False)["input_ids"]])
    return n + extra


class _LMLoss(nn.Module):
    """The reasoner's LM loss as a module ``forward``, so DDP (whose hooks run on ``__call__``)
    all-reduces its gradients."""

    def __init__(self, reasoner: nn.Module) -> None:
        super().__init__()
        self.reasoner = reasoner

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.reasoner.lm_loss(input_ids, attention_mask, labels)


def _wrap(model: nn.Module, dist: DistInfo, find_unused: bool = False) -> nn.Module:
    if not dist.enabled:
        return model
    return nn.parallel.DistributedDataParallel(model, find_unused_parameters=find_unused)
