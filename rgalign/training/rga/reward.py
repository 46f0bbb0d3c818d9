"""Stage 3's reward: how well the reward model's ranking of the shown slate, given a candidate's
latent query, explains the logged clicks (`reward_scores`, ListNet log-likelihood or NDCG); the
best and worst candidate per request (`best_of_n`); and the RG-SFT data made of the best
(`sft_examples`).

Shapes: R requests, n candidates, S shown intents (``mask`` marks real ones), d the latent size,
Fc / Fn the categorical / numeric feature counts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rgalign.errors import ConfigError, TrainError
from rgalign.models.prompt import build_target
from rgalign.training.rga.modes import eval_mode, module_device

REWARD_KINDS = ("listnet", "ndcg")


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
    device = module_device(ranker)
    flat = latents.reshape(r * n, d)
    rows = torch.arange(r).repeat_interleave(n)  # candidate row -> its request
    reward_fn = listnet_loglik if kind == "listnet" else ndcg_reward
    out = torch.empty(r * n)
    with eval_mode(ranker), torch.no_grad():
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
