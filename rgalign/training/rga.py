"""Ranking-Guided Alignment (RGA), stages 3-5 of SPEC §3, as pure functions.

The stage drivers (resumable, checkpointed) live elsewhere; this file holds the algorithm:

    stage 3, RG-SFT   `candidate_queries` -> `candidate_latents` -> `reward_scores` -> `best_of_n`
                      -> `sft_examples` (trained with ``Reasoner.lm_loss``, e.g. ``loops.train_sft``)
    stage 4, DPO      `dpo_pairs` (best vs worst candidate, reward-margin filter)
                      -> `batched_sequence_logprobs` / `dpo_batch_loss` -> `dpo_loss`
    stage 5, RG-CL    `clicked_intent_targets` -> `info_nce`
    tests/guards      `freeze`, `param_checksums`, `frozen_unchanged`, `changed_names`

Shapes used throughout: R requests, n candidate queries per request, N KB intents, S shown
intents per request (padded, ``mask`` marks real ones), d the latent query size, Fc / Fn the
categorical / numeric feature counts.

The reward model is the stage-2 QE ranker. A *text* candidate query is turned into what the ranker
reads, a latent query, by running ``prompt + " " + candidate`` through the reasoner (last-token
pooling, projection, L2 norm; `candidate_latents`): the latent the reasoner would produce had it
reasoned that query itself. The ranker then scores the request's shown slate with it, and the
reward says how well that ranking explains the logged clicks (`reward_scores`).

Example (tiny models from ``tests/tiny.py``)::

    cands = candidate_queries(reasoner, tok, prompts, kb_texts, prior, n=8, seed=0)
    lat = candidate_latents(reasoner, tok, prompts, cands)                 # (R, 8, d)
    rew = reward_scores(ranker, cat, num, lat, shown, labels, mask)        # (R, 8)
    best, worst, margin = best_of_n(rew)
    sft_prompts, sft_targets = sft_examples(prompts, cands, best)
    pairs = dpo_pairs(prompts, cands, rew, min_margin=0.05)
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rgalign.errors import ConfigError, TrainError
from rgalign.models.prompt import build_target
from rgalign.models.tokenizer import encode_pairs

__all__ = [
    "DPOPair",
    "batched_sequence_logprobs",
    "best_of_n",
    "candidate_latents",
    "candidate_queries",
    "changed_names",
    "clicked_intent_targets",
    "dedup_key",
    "dpo_batch_loss",
    "dpo_loss",
    "dpo_pairs",
    "freeze",
    "frozen_unchanged",
    "info_nce",
    "listnet_loglik",
    "ndcg_reward",
    "param_checksums",
    "reward_scores",
    "sft_examples",
]

REWARD_KINDS = ("listnet", "ndcg")


# ---- small helpers -------------------------------------------------------------------------------


def _device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Put ``module`` (and every submodule) in eval mode; restore each one's mode afterwards.

    Modes are restored per submodule, not with ``module.train(previous)``, so a model whose
    parts were deliberately in different modes (a frozen sub-tower in eval) comes back as it was.
    """
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        still = [type(m).__name__ for m in module.modules() if m.training]
        if still:  # a submodule overriding train()/eval() would make the reward noisy
            raise TrainError(f"could not put {', '.join(sorted(set(still)))} in eval mode")
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def dedup_key(text: str) -> str:
    """Two candidates are the same query when they differ only in case and whitespace."""
    return " ".join(text.split()).casefold()


def _as_tensor(x: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.to(dtype) if dtype is not None else t


# ---- stage 3: candidates ---------------------------------------------------------------------------


def candidate_queries(
    reasoner: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    kb_texts: Sequence[str],
    prior_scores: torch.Tensor | np.ndarray | None = None,
    n: int = 8,
    n_sampled: int | None = None,
    temperature: float = 1.0,
    top_p: float = 0.95,
    max_new_tokens: int = 24,
    seed: int | None = 0,
    batch_size: int = 64,
) -> list[list[str]]:
    """Best-of-N candidate pool: exactly ``n`` distinct text queries for each of R prompts.

    Args:
        reasoner: a `Reasoner` (``generate_query`` is used; its train/eval mode is kept).
        prompts: R prompt strings (`rgalign.models.prompt.build_prompt`).
        kb_texts: N intent texts in KB order.
        prior_scores: (R, N) scores of every KB intent per request under the reward model,
            e.g. the stage-2 QE ranker's ``score_all`` on the current reasoner's latent query.
            None: no prior, the KB candidates are drawn uniformly at random (seeded).
        n: pool size per request.
        n_sampled: how many of the ``n`` come from sampling the reasoner; default ``n // 2``.
        temperature, top_p, max_new_tokens: sampling settings passed to ``generate_query``.
        seed: chunk ``i`` of ``batch_size`` prompts samples with ``seed + i``, so a pool is
            reproducible for a given (seed, batch_size); None draws from the global RNG.
        batch_size: prompts per ``generate`` call (``batch_size * n_sampled`` sequences).

    Returns:
        R lists of ``n`` strings (no leading space): first the distinct non-empty samples, in
        sampling order, then KB texts in decreasing prior score, skipping any already in the
        pool. Duplicates are judged case- and whitespace-insensitively. A request gets at least
        ``n - n_sampled`` KB texts, more when samples repeat or come out empty. Only when the KB
        has fewer than ``n`` distinct texts is the pool padded by repeating its last entry.

    Why the split: sampled queries are what the reasoner can *say* (RG-SFT and DPO move the
    policy among them); KB texts ranked by the reward model are strong, always well-formed
    candidates (early on, a freshly warmed-up reasoner samples mostly noise, and the best of N
    would otherwise be the least-bad noise). Half and half keeps both sources in every pool;
    a lower-ranked KB text also supplies a clearly worse "rejected" for DPO.
    """
    n = int(n)
    if n < 1:
        raise ConfigError(f"candidate pool size n must be >= 1, got {n}")
    n_sampled = n // 2 if n_sampled is None else int(n_sampled)
    if not 0 <= n_sampled <= n:
        raise ConfigError(f"n_sampled must be in [0, n={n}], got {n_sampled}")
    if not kb_texts and n_sampled < n:
        raise ConfigError("candidate_queries needs KB texts for the KB part of the pool")
    r, n_kb = len(prompts), len(kb_texts)
    if r == 0:
        return []

    # KB order per request: decreasing prior (ties -> lower KB index), or a seeded permutation
    if prior_scores is not None:
        prior = _as_tensor(prior_scores, torch.float32).detach().cpu()
        if tuple(prior.shape) != (r, n_kb):
            raise ConfigError(f"prior_scores has shape {tuple(prior.shape)}, expected (R, N) = ({r}, {n_kb})")
        kb_order = torch.sort(prior, dim=1, descending=True, stable=True).indices.numpy()
    else:
        rng = np.random.default_rng(0 if seed is None else seed)
        kb_order = np.argsort(rng.random((r, n_kb)), axis=1, kind="stable")

    sampled: list[list[str]] = [[] for _ in range(r)]
    if n_sampled > 0:
        for chunk, start in enumerate(range(0, r, batch_size)):
            texts = reasoner.generate_query(
                list(prompts[start : start + batch_size]),
                tokenizer,
                n=n_sampled,
                temperature=temperature,
                top_p=top_p,
                max_new_tokens=max_new_tokens,
                seed=None if seed is None else seed + chunk,
            )
            sampled[start : start + len(texts)] = texts

    pools: list[list[str]] = []
    for i in range(r):
        pool: list[str] = []
        seen: set[str] = set()
        for t in sampled[i]:
            t = t.strip()
            k = dedup_key(t)
            if k and k not in seen:
                seen.add(k)
                pool.append(t)
        for j in kb_order[i]:
            if len(pool) >= n:
                break
            t = str(kb_texts[int(j)]).strip()
            k = dedup_key(t)
            if k and k not in seen:
                seen.add(k)
                pool.append(t)
        if not pool:
            raise TrainError(f"request {i}: no candidate query at all (empty samples and KB texts)")
        pool += [pool[-1]] * (n - len(pool))  # only with a KB of fewer than n distinct texts
        pools.append(pool)
    return pools


@torch.no_grad()
def candidate_latents(
    reasoner: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    candidates: Sequence[Sequence[str]],
    max_len: int | None = None,
    batch_size: int = 256,
    share_prompt: bool = True,
) -> torch.Tensor:
    """Latent query of each candidate: ``reasoner(prompt + " " + candidate)``.

    Args:
        prompts: R prompts; candidates: R lists of n strings (`candidate_queries`).
        max_len: the prompt's token budget, as in ``encode_prompts`` (default
            ``reasoner.config.max_len``); a candidate gets up to ``max_len // 2`` more.
        batch_size: candidate texts per forward pass (``batch_size // n`` prompts per chunk).
        share_prompt: run each prompt once and its n candidates on top of its key/value cache
            (default), instead of n full ``prompt + candidate`` passes. A prompt is ~80 tokens
            and a query ~10-25, so this does ~3x less work; the numbers are the same up to
            float rounding (tested), because the byte-level tokenizer never merges across the
            space that starts the candidate (``encode_pairs`` relies on the same fact) and
            position ids come from the joint attention mask either way.

    Returns:
        (R, n, d) float32 on CPU, unit L2 norm: the last-token-pooled, projected latent of the
        prompt followed by the candidate, i.e. what the reasoner's latent query would be had it
        reasoned that query. Computed in eval mode (restored afterwards) and without gradient:
        it is the reward model's input and RG-CL's target, both constants for the policy.

    Tokens: the prompt as the reasoner reads it (``encode_prompts``: ``<bos>`` and at most
    ``max_len - 1`` of its last tokens) followed by the candidate's tokens (``" " + candidate``,
    at most its first ``max_len // 2``, as ``encode_pairs`` caps a target). The prompt is never
    cut to make room: the backbone handles ``2 * max_len`` positions (generation goes past the
    prompt too), and a prompt cut differently per candidate would change what is compared.
    """
    r = len(prompts)
    if len(candidates) != r:
        raise ConfigError(f"{r} prompts but {len(candidates)} candidate lists")
    if r == 0:
        return torch.zeros(0, 0, reasoner.config.d_query)
    n = len(candidates[0])
    if n == 0 or any(len(c) != n for c in candidates):
        raise ConfigError("every request needs the same number (>= 1) of candidates")
    max_len = int(max_len or reasoner.config.max_len)
    with _eval_mode(reasoner):
        if share_prompt:
            out = _latents_shared_prompt(reasoner, tokenizer, prompts, candidates, max_len, batch_size)
        else:
            out = _latents_joined(reasoner, tokenizer, prompts, candidates, max_len, batch_size)
    return out.view(r, n, -1)


def _token_rows(tokenizer, prompts, candidates, max_len: int) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of the R prompts (``<bos>`` + end, ``max_len`` at most) and of the R * n
    candidates (``" " + text``, first ``max_len // 2`` tokens, never empty)."""
    p_rows = []
    for p in tokenizer(list(prompts), add_special_tokens=True, verbose=False)["input_ids"]:
        p = list(p)
        p_rows.append(p if len(p) <= max_len else [p[0]] + p[len(p) - max_len + 1 :])
    c_all = tokenizer([" " + c.strip() for cs in candidates for c in cs], add_special_tokens=False, verbose=False)["input_ids"]
    c_rows = [list(c)[: max(1, max_len // 2)] or [tokenizer.eos_token_id] for c in c_all]
    return p_rows, c_rows


def _pad(rows: Sequence[list[int]], pad: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Id lists -> (ids, mask), each (len(rows), longest) int64, padded on the left or right."""
    width = max(len(x) for x in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, x in enumerate(rows):
        sl = slice(width - len(x), width) if left else slice(0, len(x))
        ids[k, sl] = torch.tensor(x, dtype=torch.long)
        mask[k, sl] = 1
    return ids, mask


def _latents_joined(reasoner, tokenizer, prompts, candidates, max_len: int, batch_size: int) -> torch.Tensor:
    """One full forward pass per prompt + candidate token row: (R * n, d). The reference for
    the shared-prompt path. Rows are sorted by length before batching (less padding; pooling
    and position ids come from the attention mask, so a row's latent does not depend on its
    batch)."""
    n = len(candidates[0])
    p_rows, c_rows = _token_rows(tokenizer, prompts, candidates, max_len)
    rows = [p_rows[k // n] + c for k, c in enumerate(c_rows)]
    order = np.argsort([len(x) for x in rows], kind="stable")
    device = _device(reasoner)
    out = torch.empty(len(rows), reasoner.config.d_query)
    for start in range(0, len(rows), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = _pad([rows[k] for k in idx], tokenizer.pad_token_id, left=True)
        z = reasoner(ids.to(device), mask.to(device))
        out[torch.from_numpy(idx)] = z.float().cpu()
    return out


def _latents_shared_prompt(reasoner, tokenizer, prompts, candidates, max_len: int, batch_size: int) -> torch.Tensor:
    """Prompt once, candidates on its cache: (R * n, d). Layout of one candidate row::

        [pad ... pad <bos> prompt tokens][" candidate" tokens pad ... pad]
         left-padded prompt (cached)      right-padded candidate (this pass)

    Attention mask = the two masks side by side; position ids = cumsum(mask) - 1, exactly as
    for the joined text; pooled at the candidate's last real token.
    """
    from transformers import DynamicCache

    r, n = len(prompts), len(candidates[0])
    device = _device(reasoner)
    p_all, c_all = _token_rows(tokenizer, prompts, candidates, max_len)
    pass_positions = getattr(reasoner, "_pass_positions", True)
    base = reasoner.backbone.base_model
    # transformers 5.x names the argument ``cache`` (``past_key_values`` is deprecated there);
    # a remote-code or older model may know only the old name
    cache_arg = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    per_chunk = max(1, batch_size // n)
    out = torch.empty(r * n, reasoner.config.d_query)
    for start in range(0, r, per_chunk):
        stop = min(r, start + per_chunk)
        p_ids, p_mask = _pad(p_all[start:stop], tokenizer.pad_token_id, left=True)
        c_ids, c_mask = _pad(c_all[start * n : stop * n], tokenizer.pad_token_id, left=False)
        tp = p_ids.shape[1]
        p_ids, p_mask, c_ids, c_mask = p_ids.to(device), p_mask.to(device), c_ids.to(device), c_mask.to(device)

        cache = DynamicCache(config=reasoner.backbone.config)  # sliding-window layers, where a model has them
        kw: dict[str, Any] = {"input_ids": p_ids, "attention_mask": p_mask, cache_arg: cache, "use_cache": True}
        if pass_positions:
            kw["position_ids"] = (p_mask.cumsum(-1) - 1).clamp(min=0)
        base(**kw)
        cache.batch_repeat_interleave(n)
        full_mask = torch.cat([p_mask.repeat_interleave(n, dim=0), c_mask], dim=1)
        kw = {"input_ids": c_ids, "attention_mask": full_mask, cache_arg: cache, "use_cache": True}
        if pass_positions:
            kw["position_ids"] = (full_mask.cumsum(-1) - 1).clamp(min=0)[:, tp:]
        h = base(**kw).last_hidden_state  # (rows, tc, H)
        last = (c_mask.sum(-1) - 1).view(-1, 1, 1).expand(-1, 1, h.shape[-1])
        z = F.normalize(reasoner.proj(h.gather(1, last).squeeze(1)), dim=-1)
        out[start * n : stop * n] = z.float().cpu()
    return out


# ---- stage 3: reward -------------------------------------------------------------------------------


def listnet_loglik(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-request ListNet log-likelihood of the clicks: (B, S) each -> (B,).

    ``sum_i y_i / sum(y) * log softmax(logits)_i`` over real impressions: minus the per-request
    term of `rgalign.models.losses.listnet_loss` (whose mean over clicked requests is the loss).
    0 for a request without a click (no target distribution, no information).
    """
    mask = mask.bool()
    y = labels.to(logits.dtype) * mask
    clicks = y.sum(dim=-1)
    neg = torch.finfo(logits.dtype).min
    logp = torch.log_softmax(logits.masked_fill(~mask, neg), dim=-1).masked_fill(~mask, 0.0)
    return (y / clicks.clamp(min=1.0).unsqueeze(-1) * logp).sum(dim=-1)


def ndcg_reward(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-request NDCG of the shown slate ranked by ``logits``, binary gains: (B, S) -> (B,).

    Full slate (no cut-off), ``1 / log2(rank + 1)`` discounts, ties broken by slate position as
    `rgalign.metrics.ndcg_at_k` breaks them by index; 0 for a request without a click.
    """
    mask = mask.bool()
    y = (labels.to(logits.dtype) * mask).clamp(0, 1)
    neg = torch.finfo(logits.dtype).min
    order = torch.sort(logits.masked_fill(~mask, neg), dim=-1, descending=True, stable=True).indices
    gains = y.gather(-1, order)
    s = logits.shape[-1]
    discount = 1.0 / torch.log2(torch.arange(2, s + 2, dtype=logits.dtype, device=logits.device))
    dcg = (gains * discount).sum(dim=-1)
    n_rel = y.sum(dim=-1).long()
    ideal_table = torch.cat([torch.zeros(1, dtype=logits.dtype, device=logits.device), discount.cumsum(0)])
    ideal = ideal_table[n_rel]
    return torch.where(n_rel > 0, dcg / ideal.clamp(min=1e-12), torch.zeros_like(dcg))


def reward_scores(
    ranker: nn.Module,
    cat: torch.Tensor,
    num: torch.Tensor,
    latents: torch.Tensor,
    shown: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    kind: str = "listnet",
    batch_size: int = 4096,
) -> torch.Tensor:
    """Reward of every candidate query under the reward model (the stage-2 QE ranker).

    Args:
        ranker: a `QERanker` (``forward(cat, num, query, intent_idx) -> (B, S) logits``).
        cat (R, Fc) int64, num (R, Fn) float32: the request's encoded features.
        latents: (R, n, d) candidate latent queries (`candidate_latents`).
        shown (R, S) int64 KB indices of the shown intents (padding: any value, e.g.
        ``RequestArrays``' -1; it is clamped to 0 and masked),
        labels (R, S) {0, 1} clicks, mask (R, S) 1 on real impressions.
        kind: "listnet" (default) = `listnet_loglik`, the log-likelihood of the clicked intents
            under the ranker's softmax over the shown slate (minus the ListNet loss); "ndcg" =
            `ndcg_reward` over the shown slate.
        batch_size: candidate rows per ranker call.

    Returns:
        (R, n) float32 on CPU, higher is better. Requests without a click get 0 for every
        candidate: all ties, margin 0, so the margin filters of `dpo_pairs` drop them.

    The ranker runs in eval mode (dropout off: a reward must be a function of the candidate, not
    of a dropout mask) and under ``torch.no_grad`` (it is a frozen reward model, never trained
    by RGA's policy updates); every submodule's mode is restored afterwards. ListNet is the
    default because it is smooth in the logits: NDCG over a slate of ~5-10 shown intents takes a
    handful of values, so many candidates tie and best/worst pairs carry little signal.
    """
    if kind not in REWARD_KINDS:
        raise ConfigError(f"reward kind must be one of {', '.join(REWARD_KINDS)}, got {kind!r}")
    if latents.dim() != 3:
        raise ConfigError(f"latents must be (R, n, d), got shape {tuple(latents.shape)}")
    r, n, d = latents.shape
    for name, t in (("cat", cat), ("num", num), ("shown", shown), ("labels", labels), ("mask", mask)):
        if t.shape[0] != r:
            raise ConfigError(f"{name} has {t.shape[0]} rows, latents have {r} requests")
    if not (shown.shape == labels.shape == mask.shape):
        raise ConfigError(
            f"shown {tuple(shown.shape)}, labels {tuple(labels.shape)} and mask {tuple(mask.shape)} differ"
        )
    device = _device(ranker)
    flat = latents.reshape(r * n, d)
    rows = torch.arange(r).repeat_interleave(n)  # candidate row -> its request
    reward_fn = listnet_loglik if kind == "listnet" else ndcg_reward
    out = torch.empty(r * n)
    with _eval_mode(ranker), torch.no_grad():
        for start in range(0, r * n, batch_size):
            req = rows[start : start + batch_size]
            logits = ranker(
                cat[req].to(device),
                num[req].to(device).float(),
                flat[start : start + batch_size].to(device).float(),
                shown[req].to(device).long().clamp(min=0),
            )
            rew = reward_fn(logits.float(), labels[req].to(device), mask[req].to(device))
            out[start : start + len(req)] = rew.cpu()
    return out.view(r, n)


def best_of_n(rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best and worst candidate per request: rewards (R, n) -> best_idx (R,) int64,
    worst_idx (R,) int64, margin (R,) float (best reward - worst reward, >= 0).

    Ties go to the lowest index, for both best and worst (explicitly: the first position equal
    to the row's max / min, not whatever an argmax kernel returns). With all rewards equal,
    best == worst and the margin is 0. NaN rewards are an error: a broken reward model must
    not silently pick candidates.
    """
    if rewards.dim() != 2 or rewards.shape[1] == 0:
        raise ConfigError(f"rewards must be (R, n) with n >= 1, got shape {tuple(rewards.shape)}")
    if torch.isnan(rewards).any():
        raise TrainError("reward scores contain NaN: check the reward model and its inputs")
    hi = rewards.max(dim=1, keepdim=True).values
    lo = rewards.min(dim=1, keepdim=True).values
    best = (rewards == hi).long().argmax(dim=1)  # first True: argmax returns the first maximum
    worst = (rewards == lo).long().argmax(dim=1)
    return best, worst, (hi - lo).squeeze(1)


# ---- stage 3: RG-SFT data --------------------------------------------------------------------------


def sft_examples(
    prompts: Sequence[str], candidates: Sequence[Sequence[str]], best_idx: torch.Tensor | Sequence[int]
) -> tuple[list[str], list[str]]:
    """RG-SFT data: each prompt with its best candidate as the target.

    Returns (prompts, targets), R each; a target is formatted as `build_target` formats the
    warm-up stage's targets (one leading space), so ``encode_pairs`` and ``Reasoner.lm_loss``
    (e.g. `rgalign.training.loops.train_sft`) train on it exactly as in stage 1.
    """
    best = [int(i) for i in (best_idx.tolist() if isinstance(best_idx, torch.Tensor) else best_idx)]
    if not (len(prompts) == len(candidates) == len(best)):
        raise ConfigError(f"{len(prompts)} prompts, {len(candidates)} candidate lists, {len(best)} best indices")
    targets = [build_target([cands[b]]) for cands, b in zip(candidates, best)]
    return list(prompts), targets


# ---- stage 4: DPO ----------------------------------------------------------------------------------


class DPOPair(NamedTuple):
    """One preference: the prompt, the preferred and the rejected target (leading space, as
    `build_target`), ready for ``encode_pairs``."""

    prompt: str
    chosen: str
    rejected: str


def dpo_pairs(
    prompts: Sequence[str],
    candidates: Sequence[Sequence[str]],
    rewards: torch.Tensor,
    min_margin: float = 0.0,
) -> list[DPOPair]:
    """(best, worst) preference pair per request, kept when the reward margin is large enough.

    rewards (R, n). A request is kept when ``margin > 0`` and ``margin >= min_margin``
    (`best_of_n`'s margin): a pair with margin 0 is a tie (no preference, e.g. a request
    without a click) and a small margin is within the reward model's noise, where DPO would
    learn the noise. Pairs whose texts are equal after normalisation are dropped too. Returns
    the kept pairs, in request order.
    """
    if len(prompts) != len(candidates) or rewards.shape[0] != len(prompts):
        raise ConfigError(f"{len(prompts)} prompts, {len(candidates)} candidate lists, {rewards.shape[0]} reward rows")
    best, worst, margin = best_of_n(rewards)
    out: list[DPOPair] = []
    for i, (p, cands) in enumerate(zip(prompts, candidates)):
        m = float(margin[i])
        chosen, rejected = cands[int(best[i])], cands[int(worst[i])]
        if m <= 0.0 or m < min_margin or dedup_key(chosen) == dedup_key(rejected):
            continue
        out.append(DPOPair(p, build_target([chosen]), build_target([rejected])))
    return out


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO (Rafailov et al., 2023): ``mean(-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))))``.

    All four are (B,) summed sequence log-probabilities (`batched_sequence_logprobs`); the
    reference ones are treated as constants (detached). ``beta`` 0.1 is the paper's and TRL's
    default: the implicit KL leash to the reference (the RG-SFT model).

    Returns (loss scalar, stats) with stats floats: ``loss``, ``reward_accuracy`` (fraction of
    pairs whose implicit reward ``beta * (pi - ref)`` is higher for the chosen), ``reward_margin``
    (mean chosen - rejected implicit reward), ``chosen_reward``, ``rejected_reward`` (means).
    """
    logps = (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    shapes = {tuple(t.shape) for t in logps}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ConfigError(f"DPO log-probabilities must be four (B,) tensors of one size, got shapes {sorted(shapes)}")
    chosen = beta * (policy_chosen_logps - ref_chosen_logps.detach())
    rejected = beta * (policy_rejected_logps - ref_rejected_logps.detach())
    margin = chosen - rejected
    loss = -F.logsigmoid(margin).mean()
    stats = {
        "loss": float(loss.detach()),
        "reward_accuracy": float((margin > 0).float().mean()),
        "reward_margin": float(margin.detach().mean()),
        "chosen_reward": float(chosen.detach().mean()),
        "rejected_reward": float(rejected.detach().mean()),
    }
    return loss, stats


def batched_sequence_logprobs(
    reasoner: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    batch_size: int = 32,
    max_len: int | None = None,
    grad: bool = False,
) -> torch.Tensor:
    """Summed log-probability of each response given its prompt: B pairs -> (B,) float32.

    Pairs are tokenised by ``encode_pairs`` (``<bos> prompt response <eos>``, the response and
    its ``<eos>`` labelled) and scored by ``Reasoner.sequence_logprobs`` ``batch_size`` at a time.

    ``grad=False`` (default, the reference model): no_grad and eval mode (restored afterwards);
    the result is a constant. ``grad=True`` (the policy): the module's mode is left as it is and
    the graph is kept, so ``loss.backward()`` reaches the policy's weights.
    """
    if len(prompts) != len(responses):
        raise ConfigError(f"{len(prompts)} prompts but {len(responses)} responses")
    max_len = int(max_len or reasoner.config.max_len)
    device = _device(reasoner)

    def run() -> torch.Tensor:
        parts = []
        for start in range(0, len(prompts), batch_size):
            stop = start + batch_size
            enc = encode_pairs(tokenizer, prompts[start:stop], responses[start:stop], max_len)
            b = {k: v.to(device) for k, v in enc.items()}
            parts.append(reasoner.sequence_logprobs(b["input_ids"], b["attention_mask"], b["labels"]))
        return torch.cat(parts).float() if parts else torch.zeros(0, device=device)

    if grad:
        return run()
    with _eval_mode(reasoner), torch.no_grad():
        return run()


def dpo_batch_loss(
    policy: nn.Module,
    reference: nn.Module,
    tokenizer: Any,
    pairs: Sequence[DPOPair],
    beta: float = 0.1,
    max_len: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO loss of one batch of pairs: `dpo_loss` on policy (with grad) and reference (frozen,
    no_grad, eval) log-probabilities. Chosen and rejected go through each model in one forward
    pass of 2B rows (half the calls, same numbers)."""
    if not pairs:
        raise ConfigError("dpo_batch_loss needs at least one pair")
    b = len(pairs)
    prompts = [p.prompt for p in pairs] * 2
    responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    pol = batched_sequence_logprobs(policy, tokenizer, prompts, responses, batch_size=2 * b, max_len=max_len, grad=True)
    ref = batched_sequence_logprobs(reference, tokenizer, prompts, responses, batch_size=2 * b, max_len=max_len)
    return dpo_loss(pol[:b], pol[b:], ref[:b].to(pol.device), ref[b:].to(pol.device), beta)


# ---- stage 5: RG-CL --------------------------------------------------------------------------------


def info_nce(
    anchor: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor | None = None,
    temperature: float = 0.1,
    negative_mask: torch.Tensor | None = None,
    duplicate_eps: float = 1e-6,
) -> torch.Tensor:
    """InfoNCE of each anchor against its positive, in-batch negatives and extra negatives.

    Args:
        anchor: (B, d) latent queries (the policy's, with gradient).
        positives: (B, d) targets, row i the positive of anchor i; row j != i is a negative of
            anchor i (in-batch negatives). Usually constants (`clicked_intent_targets`).
        negatives: (M, d) extra negatives shared by the batch, e.g. the KB intents' latents.
        temperature: 0.1. On unit vectors the logits lie in [-10, 10], room enough for a
            softmax over B + M (a few hundred) entries; much lower (CLIP's 0.07 and below)
            puts nearly all the gradient on the single hardest negative.
        negative_mask: (B, M) or (M,) bool, True where negative m is a valid negative for
            anchor i; pass False for the intents request i clicked (they are not negatives).
        duplicate_eps: in-batch positive j is not a negative of anchor i when it is the same
            vector as positive i (cosine >= 1 - eps): two requests with the same clicked intents
            would otherwise push each other's anchors away from the right answer.

    All of anchor, positives and negatives are L2-normalised here (cosine similarity), so the
    loss aligns directions, which is what the ranker reads from a unit-norm latent query.

    Returns the mean over the batch of ``-log softmax([a_i.p_j]_j ++ [a_i.n_m]_m / T)[i]``.
    """
    if anchor.dim() != 2 or anchor.shape != positives.shape:
        raise ConfigError(
            f"anchor and positives must both be (B, d), got {tuple(anchor.shape)} and {tuple(positives.shape)}"
        )
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    b = anchor.shape[0]
    a = F.normalize(anchor, dim=-1)
    p = F.normalize(positives.to(a), dim=-1)
    logits = a @ p.T / temperature  # (B, B)
    same = (p @ p.T) >= 1.0 - duplicate_eps
    same &= ~torch.eye(b, dtype=torch.bool, device=a.device)
    logits = logits.masked_fill(same, float("-inf"))
    if negatives is not None and negatives.shape[0] > 0:
        if negatives.dim() != 2 or negatives.shape[1] != a.shape[1]:
            raise ConfigError(f"negatives must be (M, {a.shape[1]}), got {tuple(negatives.shape)}")
        neg = a @ F.normalize(negatives.to(a), dim=-1).T / temperature  # (B, M)
        if negative_mask is not None:
            nm = negative_mask.to(device=a.device, dtype=torch.bool)
            nm = nm.expand(b, -1) if nm.dim() == 1 else nm
            if tuple(nm.shape) != tuple(neg.shape):
                raise ConfigError(f"negative_mask has shape {tuple(negative_mask.shape)}, expected {tuple(neg.shape)}")
            neg = neg.masked_fill(~nm, float("-inf"))
        logits = torch.cat([logits, neg], dim=1)
    return F.cross_entropy(logits, torch.arange(b, device=a.device))


def clicked_intent_targets(
    kb_latents: torch.Tensor,
    shown: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    preferred: torch.Tensor | None = None,
    preferred_weight: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RG-CL positives: what each request's latent query should point at.

    Args:
        kb_latents: (N, d) latents of the KB intents' texts, e.g. ``reasoner.encode_prompts(kb_texts)``.
        shown (R, S) int64, labels (R, S), mask (R, S): the request's slate and clicks.
        preferred: (R, d) optional latent of the reward model's preferred query, e.g.
            ``candidate_latents(...)[arange(R), best_idx]``.
        preferred_weight: its share in the positive when a request has both.

    Returns:
        positives (R, d) unit norm: ``normalize((1 - w) * mean(clicked intents' latents) +
        w * preferred)``; the clicked mean alone without ``preferred``; ``preferred`` alone for a
        request without a click.
        has_positive (R,) bool: False for a request with neither (train only on the rest).
        negative_mask (R, N) bool: True for KB intents the request did not click: the
            ``negative_mask`` of `info_nce` with ``negatives=kb_latents``.

    Both sources are used by default because they say different things: the clicked intents
    are the ground truth, the preferred query is the ranker's view of what the reasoner should
    produce; mixing them keeps RG-CL tied to clicks while following the reward model. The
    targets are detached: RG-CL moves the anchor to the target, not the target to the anchor
    (which could collapse both).
    """
    if not 0.0 <= preferred_weight <= 1.0:
        raise ConfigError(f"preferred_weight must be in [0, 1], got {preferred_weight}")
    n_kb, d = kb_latents.shape
    r = shown.shape[0]
    kb = F.normalize(kb_latents.detach().float(), dim=-1)
    clicked = (labels.bool() & mask.bool()).to(kb.device)
    multi_hot = torch.zeros(r, n_kb, device=kb.device)
    multi_hot.scatter_add_(1, shown.long().clamp(0, n_kb - 1).to(kb.device), clicked.float())
    multi_hot = multi_hot.clamp(max=1.0)
    n_clicked = multi_hot.sum(dim=1, keepdim=True)
    has_click = n_clicked.squeeze(1) > 0
    click_mean = F.normalize(multi_hot @ kb / n_clicked.clamp(min=1.0), dim=-1)
    if preferred is None:
        target, has = click_mean, has_click
    else:
        if tuple(preferred.shape) != (r, d):
            raise ConfigError(f"preferred has shape {tuple(preferred.shape)}, expected ({r}, {d})")
        pref = F.normalize(preferred.detach().float().to(kb.device), dim=-1)
        w = torch.where(has_click, preferred_weight, 1.0).to(kb.dtype).unsqueeze(1)
        target = (1 - w) * click_mean + w * pref
        has = torch.ones(r, dtype=torch.bool, device=kb.device)
    return F.normalize(target, dim=-1), has, multi_hot == 0


# ---- guards for frozen models ----------------------------------------------------------------------


def freeze(module: nn.Module) -> nn.Module:
    """Freeze a reference / reward model in place: no parameter requires grad, eval mode."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


@torch.no_grad()
def param_checksums(module: nn.Module) -> dict[str, float]:
    """One float per state-dict entry (parameters and buffers): a position-weighted float64
    sum, ``sum_k x_k * (1 + (k mod 97) / 97)``, so a changed element, a sign flip or two
    swapped elements all change it (a plain sum misses swaps and cancelling updates)."""
    out: dict[str, float] = {}
    for name, t in module.state_dict().items():
        x = t.detach().flatten().cpu().double()
        w = 1.0 + (torch.arange(x.numel(), dtype=torch.float64) % 97) / 97.0
        out[name] = float((x * w).sum())
    return out


def changed_names(before: Mapping[str, float], after: Mapping[str, float], rtol: float = 0.0) -> list[str]:
    """Names whose checksum differs (beyond ``rtol`` relative), or that exist on one side only."""
    names = sorted(set(before) | set(after))
    out = []
    for k in names:
        if k not in before or k not in after:
            out.append(k)
            continue
        x, y = before[k], after[k]
        if not (x == y or (math.isfinite(x) and math.isfinite(y) and abs(x - y) <= rtol * max(abs(x), abs(y)))):
            out.append(k)
    return out


def frozen_unchanged(before: Mapping[str, float], after: Mapping[str, float], rtol: float = 0.0) -> bool:
    """True when two `param_checksums` snapshots are identical (exactly, by default)."""
    return not changed_names(before, after, rtol)
