"""Scoring a split with a ranker and turning the scores into the SPEC §4 metrics."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import nn

from rgalign import metrics
from rgalign.data.requests import RequestArrays
from rgalign.metrics.merge import finish, merge_parts, split_parts
from rgalign.models.prompt import PromptFields, build_prompt
from rgalign.training.distributed import (
    DistInfo, all_gather_object, all_gather_rows, all_reduce_array, all_reduce_max, shard,
)

LOCAL = DistInfo()  # the whole split is here: nothing to merge
from rgalign.training.loops import EVAL_BATCH, slate_logits, torch_threads


def baseline_forward(model: nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits (B, S) of the AutoInt+MoE baseline over the shown slate."""
    return model(b["cat"], b["num"], b["shown"])


def qe_forward(model: nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits (B, S) of the QE ranker over the shown slate, given the latent queries."""
    return model(b["cat"], b["num"], b["query"], b["shown"])


@torch.no_grad()
def all_logits(model: nn.Module, arrays: RequestArrays, query: torch.Tensor | None) -> np.ndarray:
    """(R, N) logits of every KB intent for each request (``score_all``)."""
    was = model.training
    model.eval()
    if len(arrays) == 0:  # a shard's empty split
        return np.zeros((0, model.config.n_intents), np.float32)
    out = []
    for i in range(0, len(arrays), EVAL_BATCH):
        sl = slice(i, min(i + EVAL_BATCH, len(arrays)))
        cat, num = torch.from_numpy(arrays.cat[sl]), torch.from_numpy(arrays.num[sl])
        s = model.score_all(cat, num, query[sl]) if query is not None else model.score_all(cat, num)
        out.append(s.numpy())
    model.train(was)
    return np.concatenate(out)


def cohort_masks(arrays: RequestArrays, train: RequestArrays, dist: DistInfo = LOCAL) -> dict[str, np.ndarray]:
    """(R, S) masks of ``arrays``' impressions by whether the training split knows their intent
    (shown at least once) and their user (at least one request): the cold-start cohorts the
    evaluation reports GAUC on. With the data sharded (``dist.data_sharded``) "the training split"
    is every rank's: intents by all-reduced show counts, users by the gathered sets of ids."""
    n = int(max(arrays.shown.max(initial=-1), train.shown.max(initial=-1))) + 1
    if dist.data_sharded:
        n = all_reduce_max(n, dist)
    shows = np.bincount(train.shown[train.mask], minlength=n).astype(np.int64)
    seen_intent = all_reduce_array(shows, dist) > 0 if dist.data_sharded else shows > 0
    intent_seen = seen_intent[np.maximum(arrays.shown, 0)] & arrays.mask
    train_users = train.user_ids.astype(str)
    if dist.data_sharded:
        train_users = np.concatenate(all_gather_object(np.unique(train_users), dist))
    user_seen = np.isin(arrays.user_ids.astype(str), train_users)[:, None] & arrays.mask
    return {"seen_intents": intent_seen, "cold_intents": arrays.mask & ~intent_seen,
            "seen_users": user_seen, "cold_users": arrays.mask & ~user_seen}


def metrics_from_scores(arrays: RequestArrays, shown_logits: np.ndarray, scores_all: np.ndarray, k: int = 3,
                        cohorts: dict[str, np.ndarray] | None = None, probs: np.ndarray | None = None,
                        dist: DistInfo = LOCAL) -> dict[str, float]:
    """SPEC §4 metrics of one split from (R, S) shown-slate logits and (R, N) all-intent scores;
    with ``cohorts`` (see `cohort_masks`) also GAUC per cohort. ``probs`` (R, S), when given,
    are the click probabilities (else the sigmoid of the logits).

    The one place a sharded run's metrics merge: with ``dist.data_sharded`` ``arrays`` are this
    rank's requests, every rank calls this, and every rank gets the whole split's metrics
    (`rgalign.metrics.merge`: sums and counts per request, the impressions' labels, scores and
    groups gathered for AUC and GAUC). In one process the same code runs on one piece."""
    m = arrays.mask
    R, S = m.shape
    labels = arrays.labels[m]
    if probs is None:
        probs = 1.0 / (1.0 + np.exp(-shown_logits.astype(np.float64)))
    probs = probs[m]
    groups = np.broadcast_to(arrays.groups[:, None], (R, S))[m]
    request_rows = np.broadcast_to(np.arange(R)[:, None], (R, S))[m]
    relevant = np.zeros(scores_all.shape, dtype=bool)
    clicked = m & (arrays.labels > 0)
    rows, cols = np.nonzero(clicked)
    relevant[rows, arrays.shown[rows, cols]] = True
    parts = split_parts(labels, probs, groups, request_rows, scores_all, relevant, k=k,
                        cohorts={name: c[m] for name, c in (cohorts or {}).items()})
    return finish(merge_parts(all_gather_object(parts, dist) if dist.data_sharded else [parts]))


def ranker_metrics(model: nn.Module, arrays: RequestArrays, query: torch.Tensor | None = None, k: int = 3,
                   cohorts: dict[str, np.ndarray] | None = None, dist: DistInfo = LOCAL) -> dict[str, float]:
    """AUC, GAUC, logloss, error_rate on the shown impressions and Recall/NDCG/HitRate@k over all
    KB intents (relevant = clicked), for one split; GAUC per cohort when ``cohorts`` are given.
    Collective with the data sharded (see `metrics_from_scores`)."""
    forward = qe_forward if query is not None else baseline_forward
    with torch_threads(1):
        shown_logits = slate_logits(model, forward, arrays, query)
        scores_all = all_logits(model, arrays, query)
    return metrics_from_scores(arrays, shown_logits, scores_all, k, cohorts, dist=dist)


def popularity_scores(train: RequestArrays, n_intents: int, dist: DistInfo = LOCAL) -> np.ndarray:
    """(N,) smoothed like rate of each intent over the training requests (`metrics.smoothed_like_rate`);
    over every rank's training requests when the data is sharded (the counts all-reduced)."""
    if not dist.data_sharded:
        return metrics.smoothed_like_rate(train.shown[train.mask], train.labels[train.mask], n_intents)
    shown, y = train.shown[train.mask], train.labels[train.mask].astype(np.float64)
    counts = np.stack([np.bincount(shown, minlength=n_intents).astype(np.float64),
                       np.bincount(shown, weights=y, minlength=n_intents)])
    shows, clicks = all_reduce_array(counts, dist)
    return metrics.like_rate_from_counts(shows, clicks)


def popularity_metrics(train: RequestArrays, arrays: RequestArrays, n_intents: int, k: int = 3,
                       cohorts: dict[str, np.ndarray] | None = None, dist: DistInfo = LOCAL) -> dict[str, float]:
    """The item-popularity reference scored like a model: every request ranks intents by their
    smoothed training like rate (a probability, so logloss is meaningful too)."""
    pop = popularity_scores(train, n_intents, dist)
    shown = pop[np.maximum(arrays.shown, 0)]
    scores_all = np.broadcast_to(pop[None, :], (len(arrays), n_intents))
    return metrics_from_scores(arrays, shown, scores_all, k, cohorts, probs=shown, dist=dist)


def prompts_of(arrays: RequestArrays, fields: PromptFields) -> list[str]:
    return [build_prompt(r, fields) for r in arrays.raw]


@torch.no_grad()
def latent_queries(reasoner, prompts: list[str], batch_size: int, dist: DistInfo, progress_bar=None, task=None) -> torch.Tensor:
    """Latent queries (R, d) of ``prompts`` with the reasoner in eval mode; under DDP each rank
    encodes its share and the results are gathered back in order.

    With n > 1 intra-op threads, the batches go to n worker threads of one intra-op thread each:
    for these small matrices that is 1.2x the throughput of one forward on n threads (measured on
    2 cores), and each batch's result is the same either way. Tokenising stays in this thread (a
    fast tokenizer must not be called from two threads at once)."""
    from rgalign.models.tokenizer import encode_prompts

    order = shard(np.arange(len(prompts)), dist)
    # batches of similar length pad less (pooling reads the attention mask, so a prompt's latent
    # does not depend on its batch); the rows are put back in order afterwards
    by_len = np.argsort([len(prompts[j]) for j in order], kind="stable")
    chunks = [[prompts[j] for j in order[by_len[i : i + batch_size]]] for i in range(0, len(order), batch_size)]
    max_len = reasoner.config.max_len
    device = next(reasoner.parameters()).device
    was_training = reasoner.training
    reasoner.eval()

    @torch.no_grad()  # grad mode is per thread: set here, in the thread that runs the forward
    def encode(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        z = reasoner(batch["input_ids"].to(device), batch["attention_mask"].to(device)).float().cpu()
        if progress_bar is not None:
            progress_bar.update(task, advance=len(z) * dist.world_size)
        return z

    workers = torch.get_num_threads() if device.type == "cpu" and len(chunks) > 1 else 1
    try:
        if workers > 1:
            with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
                futures = [pool.submit(encode, encode_prompts(reasoner.tokenizer, c, max_len)) for c in chunks]
                out = [f.result() for f in futures]
        else:
            out = [encode(encode_prompts(reasoner.tokenizer, c, max_len)) for c in chunks]
    finally:
        reasoner.train(was_training)
    local = torch.zeros(0, reasoner.config.d_query)
    if out:
        local = torch.empty(len(order), reasoner.config.d_query)
        local[torch.from_numpy(by_len)] = torch.cat(out)
    return all_gather_rows(local, len(prompts), dist)
