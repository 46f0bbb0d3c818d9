"""Stage 3's candidate pool: N text queries per request (`candidate_queries`, half sampled from the
policy, half KB texts ranked by the reward model) and the latent query of each candidate
(`candidate_latents`: ``prompt + " " + candidate`` through the reasoner), which is what the
reward model reads.

Shapes: R requests, n candidates per request, d the latent query size.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rgalign.errors import ConfigError, TrainError
from rgalign.training.rga.modes import eval_mode, module_device


def dedup_key(text: str) -> str:
    """Two candidates are the same query when they differ only in case and whitespace."""
    return " ".join(text.split()).casefold()


def _as_tensor(x: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.to(dtype) if dtype is not None else t


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
    with eval_mode(reasoner):
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
    device = module_device(reasoner)
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
    device = module_device(reasoner)
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
