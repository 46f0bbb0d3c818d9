"""Stage 3, RG-SFT: Best-of-N pools scored by the reward model, SFT of the policy on the best."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rgalign.errors import TrainError
from rgalign.io import write_text_atomic
from rgalign.models.qe_ranker import QERanker
from rgalign.models.reasoner import Reasoner
from rgalign.training import finetune, loops, rga
from rgalign.training.context import Context, require_reasoner
from rgalign.artifacts.run import final_models
from rgalign.training.alignment.common import CANDIDATES, clicked_rows, slate, stage_seed, stage_state_dir
from rgalign.training.global_sft import drop_stage_state, sft_for_stage
from rgalign.training.distributed import all_gather_object
from rgalign.training.parallel import dist_record
from rgalign.training.shard_data import require_everywhere


def _reward_reasoner_source(ctx: Context, policy: Reasoner, policy_dir: Path, reward_dir: Path) -> tuple[bool, str]:
    """Whether stage 3 scores with the policy itself (True) or a frozen copy of the reward
    reasoner, and what stage.json says of it. The policy serves when LoRA trains it (its base
    weights are never touched) and the reward reasoner is the very checkpoint the policy starts
    from (round 0: stage 1's reasoner, which stage 2's ranker read; later rounds: the last RG-CL
    reasoner, which stage 6 re-fitted on). Otherwise a copy, as before: a reward ranker trained on
    another reasoner (e.g. stage 6 not run in the last round), or full fine-tuning."""
    if not finetune.start_plan(policy, ctx.config).lora:
        return False, "a frozen copy (full fine-tuning: the policy's weights move)"
    if Path(policy_dir).resolve() != Path(reward_dir).resolve():
        return False, (f"a frozen copy: the reward ranker read {ctx.relative(reward_dir)}, not the policy's "
                       f"{ctx.relative(policy_dir)}")
    return True, "the policy before its adapters go in (the same checkpoint; LoRA: no copy kept)"


def user_rewards(ctx: Context, ranker: torch.nn.Module, rows: np.ndarray, latents: torch.Tensor, kind: str,
                 seed: int) -> list[torch.Tensor]:
    """Per pool (training request ``rows[i]``), the (K, n) rewards of its n candidate latent
    queries (``latents`` (R, n, d), read from that request's prompt) on the slates of K clicked
    training requests of the same user: its own first, then up to ``dpo.user_requests - 1``
    others (a seeded draw). What `rga.user_dpo_pairs` judges a preference by. With the data
    sharded, a user's requests on this rank."""
    tr = ctx.splits["train"]
    limit = ctx.config.dpo.user_requests
    clicked = np.flatnonzero((tr.mask & (tr.labels > 0)).any(axis=1))
    by_user: dict[Any, list[int]] = {}
    for i in clicked:
        by_user.setdefault(tr.user_ids[i], []).append(int(i))
    rng = np.random.default_rng([seed, 4])
    slates, pool_of = [], []
    for k, r in enumerate(rows):
        others = [i for i in by_user.get(tr.user_ids[r], []) if i != r]
        if len(others) > limit - 1:
            others = sorted(rng.choice(others, limit - 1, replace=False).tolist())
        slates += [int(r), *others]
        pool_of += [k] * (1 + len(others))
    b = slate(ctx, np.asarray(slates, dtype=np.int64))
    scored = rga.reward_scores(ranker, b["cat"], b["num"], latents[torch.as_tensor(pool_of)], b["shown"], b["labels"],
                               b["mask"], kind=kind)
    counts = np.bincount(pool_of, minlength=len(rows)).tolist()
    return list(torch.split(scored, counts))


def stage_rg_sft(ctx: Context, round_: int) -> None:
    c = ctx.config.rg_sft
    policy_dir = require_reasoner(ctx, 3)
    reward_reasoner_dir, ranker_dir = final_models(ctx.run)
    policy = Reasoner.load(policy_dir)
    shared, source = _reward_reasoner_source(ctx, policy, policy_dir, reward_reasoner_dir)
    if shared:
        # every reward latent below is computed before the adapters go in: the policy then *is*
        # the reward reasoner (as RG-CL's target encoder is the policy before training, and DPO's
        # reference the policy with its adapters off), and a second full copy would only cost memory
        frozen = rga.FrozenModels(reward_model=QERanker.load(ranker_dir))
        reward_reasoner = policy
    else:
        frozen = rga.FrozenModels(reward_model=QERanker.load(ranker_dir), reward_reasoner=Reasoner.load(reward_reasoner_dir))
        reward_reasoner = frozen.models["reward_reasoner"]
    ranker = frozen.models["reward_model"]
    tok = policy.tokenizer
    seed = stage_seed(ctx, 3, round_)
    rows = clicked_rows(ctx, c.max_requests, seed)  # sharded data: this rank's part, from its shard
    require_everywhere(len(rows), "stage 3: training requests with a click", ctx.dist)
    if len(rows) == 0:
        raise TrainError("stage 3: no training request has a click; RG-SFT needs clicked intents")
    prompts = [ctx.prompts("train")[r] for r in rows]
    b = slate(ctx, rows)
    kb = list(ctx.encoders.intent_texts)

    t0 = time.perf_counter()
    own = reward_reasoner.encode_prompts(prompts, batch_size=ctx.config.infer_batch)
    with loops.torch_threads(1), torch.no_grad():
        prior = ranker.score_all(b["cat"], b["num"], own)
    cands = rga.candidate_queries(
        policy, tok, prompts, kb, prior, n=c.n_candidates, n_sampled=c.n_sampled, temperature=c.temperature,
        top_p=c.top_p, max_new_tokens=c.max_new_tokens, seed=seed,
    )
    t_sample = time.perf_counter() - t0
    lat = rga.candidate_latents(reward_reasoner, tok, prompts, cands)
    with loops.torch_threads(1):
        rewards = rga.reward_scores(ranker, b["cat"], b["num"], lat, b["shown"], b["labels"], b["mask"], kind=c.reward)
        own_reward = rga.reward_scores(ranker, b["cat"], b["num"], own.unsqueeze(1), b["shown"], b["labels"],
                                       b["mask"], kind=c.reward).squeeze(1)
        # stage 4's user-level pairs: each candidate scored on more of the same user's slates
        per_user = (user_rewards(ctx, ranker, rows, lat, c.reward, seed)
                    if ctx.config.dpo.pairs == "user" else None)
    best, worst, margin = rga.best_of_n(rewards)
    t_score = time.perf_counter() - t0 - t_sample

    sft_prompts, sft_targets = rga.sft_examples(prompts, cands, best)
    # adapters go in after sampling (generation through them is slower, and they start at zero)
    tuning = finetune.start(policy, ctx.config)
    # the SFT stage 1 runs: global batches under torchrun (DDP or FSDP2) or --checkpoint-every
    state_dir = stage_state_dir(ctx, 3, round_)
    res = sft_for_stage(ctx.dist, state_dir)(
        policy, tok, sft_prompts, sft_targets, epochs=c.epochs, batch_size=c.batch_size, lr=c.lr,
        max_len=policy.config.max_len, seed=seed, dist=ctx.dist, description=f"3 RG-SFT (round {round_})",
        quiet=ctx.quiet, autocast=tuning.autocast,
    )
    tuning.merge()
    checks = frozen.check("stage 3")

    kb_keys = {rga.dedup_key(t) for t in kb}
    best_text = [cs[int(i)] for cs, i in zip(cands, best)]
    from_samples = float(np.mean([rga.dedup_key(t) not in kb_keys for t in best_text]))
    request_ids = ctx.splits["train"].request_ids[rows]
    lines = [
        json.dumps({"row": int(r), "request_id": str(rid), "candidates": cs, "rewards": [round(float(x), 6) for x in rw],
                    "best": int(bi), "worst": int(wi),
                    **({} if per_user is None else {"user_rewards": [[round(float(x), 6) for x in row] for row in per_user[k]]})})
        for k, (r, rid, cs, rw, bi, wi) in enumerate(zip(rows, request_ids, cands, rewards, best, worst))
    ]
    if ctx.dist.data_sharded:  # every rank's pools, in rank order; stages 4-5 find theirs by request id
        lines = [line for part in all_gather_object(lines, ctx.dist) for line in part]

    def save(d: Path) -> None:
        policy.save(d / "reasoner")
        write_text_atomic(d / CANDIDATES, "\n".join(lines) + "\n")
        write_text_atomic(d / "losses.csv", res.log.to_csv())

    info = {
        "seconds": time.perf_counter() - t0, "sampling_seconds": t_sample, "scoring_seconds": t_score,
        "sft_seconds": res.seconds, "requests": len(rows), "n_candidates": c.n_candidates,
        "reward_kind": c.reward,
        "reward": {
            "own_latent_mean": float(own_reward.mean()), "candidates_mean": float(rewards.mean()),
            "best_mean": float(rewards.max(dim=1).values.mean()), "worst_mean": float(rewards.min(dim=1).values.mean()),
            "margin_mean": float(margin.mean()), "best_from_samples": from_samples,
        },
        "final_lm_loss": res.final_loss, "examples_per_s": res.examples_per_s,
        "policy_from": ctx.relative(policy_dir), "reward_model": ctx.relative(ranker_dir),
        "reward_reasoner": ctx.relative(reward_reasoner_dir), "reward_reasoner_source": source,
        "frozen_unchanged": checks, "finetune": tuning.info(), "dist": dist_record(ctx.dist, policy),
    }
    ctx.finish(3, save, info, round_)
    drop_stage_state(ctx.dist, state_dir)
    ctx.log(f"stage 3 rg-sft (round {round_}): {len(rows)} requests x {c.n_candidates} candidates, reward "
            f"best {info['reward']['best_mean']:.3f} vs own latent {info['reward']['own_latent_mean']:.3f} "
            f"({100 * from_samples:.0f}% of best sampled), LM loss {res.final_loss:.3f}, {info['seconds']:.0f} s")
