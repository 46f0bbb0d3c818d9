"""Stage 4, DPO: (best, worst) preference pairs from the scored pools (`dpo_pairs`), the summed
log-probability of a response under a reasoner (`batched_sequence_logprobs`) and the DPO loss
(`dpo_loss`, `dpo_batch_loss`); whether a trained policy's held-out preference beats chance
(`generalises`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from rgalign.errors import ConfigError
from rgalign.models.prompt import build_target
from rgalign.models.tokenizer import encode_pairs
from rgalign.training.rga.candidates import dedup_key
from rgalign.training.rga.modes import eval_mode, module_device
from rgalign.training.rga.reward import best_of_n


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


def user_dpo_pairs(
    prompts: Sequence[str],
    candidates: Sequence[Sequence[str]],
    user_rewards: Sequence[torch.Tensor],
    min_margin: float = 0.0,
) -> list[DPOPair]:
    """(best, worst) pair per request by each candidate's reward over *several of the user's
    requests*, kept when the preference holds across them.

    ``user_rewards[i]`` is (K, n): the rewards of request ``i``'s n candidate queries on the
    slates of K >= 1 clicked training requests of the same user, request ``i``'s own first (the
    candidates are read from request ``i``'s prompt; `rg_sft.user_rewards`). Best and worst are
    by the mean over the K rows (ties: lowest index). The pair is kept when K >= 2, the mean of
    the K per-request differences (best - worst) is above its standard error and at least
    ``min_margin / sqrt(K)`` (the one-slate noise floor, averaged over K slates), and the two texts
    differ. A (best, worst) of one slate says "for this request's clicks, A over B", which the
    policy can only memorise; one that holds over a user's requests says something about the
    user the prompt describes, which generalises to held-out requests (README, Results).
    """
    if not (len(prompts) == len(candidates) == len(user_rewards)):
        raise ConfigError(f"{len(prompts)} prompts, {len(candidates)} candidate lists, {len(user_rewards)} reward sets")
    out: list[DPOPair] = []
    for p, cands, r in zip(prompts, candidates, user_rewards):
        r = torch.as_tensor(r, dtype=torch.float64)
        if r.dim() != 2 or r.shape[1] != len(cands):
            raise ConfigError(f"user rewards must be (K, {len(cands)}) for {len(cands)} candidates, got {tuple(r.shape)}")
        k = r.shape[0]
        if k < 2:
            continue
        b, w, _ = best_of_n(r.mean(dim=0, keepdim=True).float())
        best, worst = int(b[0]), int(w[0])
        d = r[:, best] - r[:, worst]
        mean, se = float(d.mean()), float(d.std() / math.sqrt(k))
        if mean <= se or mean < min_margin / math.sqrt(k) or dedup_key(cands[best]) == dedup_key(cands[worst]):
            continue
        out.append(DPOPair(p, build_target([cands[best]]), build_target([cands[worst]])))
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
    device = module_device(reasoner)

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
    with eval_mode(reasoner), torch.no_grad():
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


CHANCE = 0.5  # the reward accuracy of a policy that learned no preference (an unbiased coin)


def generalises(reward_accuracy: float | None, pairs: int) -> dict[str, Any]:
    """Whether a DPO policy's held-out reward accuracy beats chance by more than its standard error.

    The binomial standard error of an accuracy over ``pairs`` held-out pairs at chance,
    ``sqrt(0.5 * 0.5 / pairs)`` (0.071 at 50 pairs), is the noise a policy that learned nothing
    general shows; a policy is kept when ``reward_accuracy - 0.5 > se``. Without held-out pairs
    there is no evidence either way, and the policy is not kept.

    Returns ``{"kept": bool, "reward_accuracy", "pairs", "chance", "standard_error", "excess"}``
    (``excess`` = accuracy - chance, in standard errors; None without pairs).
    """
    if pairs <= 0 or reward_accuracy is None:
        return {"kept": False, "reward_accuracy": reward_accuracy, "pairs": int(pairs), "chance": CHANCE,
                "standard_error": None, "excess": None}
    se = math.sqrt(CHANCE * (1.0 - CHANCE) / pairs)
    excess = (reward_accuracy - CHANCE) / se
    return {"kept": bool(excess > 1.0), "reward_accuracy": float(reward_accuracy), "pairs": int(pairs),
            "chance": CHANCE, "standard_error": se, "excess": excess}
