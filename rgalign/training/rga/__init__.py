"""Ranking-Guided Alignment (RGA), stages 3-5 of SPEC §3, as pure functions.

The stage drivers (resumable, checkpointed) are `rgalign.training.alignment`; this package holds
the algorithm, one file a step:

    stage 3, RG-SFT   `candidate_queries` -> `candidate_latents` -> `reward_scores` -> `best_of_n`
                      -> `sft_examples` (trained with ``Reasoner.lm_loss``, e.g. ``loops.train_sft``)
    stage 4, DPO      `user_dpo_pairs` (best vs worst by the reward over several of the user's
                      requests, kept where the preference holds across them; the default) or
                      `dpo_pairs` (best vs worst of one request's slate, reward-margin filter)
                      -> `batched_sequence_logprobs` / `dpo_batch_loss` -> `dpo_loss`
                      -> `generalises` (held-out accuracy vs chance: keep the policy or its input)
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

from rgalign.training.rga.candidates import candidate_latents, candidate_queries, dedup_key
from rgalign.training.rga.contrastive import clicked_intent_targets, info_nce
from rgalign.training.rga.dpo import (
    DPOPair, batched_sequence_logprobs, dpo_batch_loss, dpo_loss, dpo_pairs, generalises, user_dpo_pairs,
)
from rgalign.training.rga.frozen import FrozenModels, changed_names, freeze, frozen_unchanged, param_checksums
from rgalign.training.rga.reward import (
    REWARD_KINDS, best_of_n, listnet_loglik, ndcg_reward, reward_scores, sft_examples,
)

__all__ = [
    "DPOPair",
    "FrozenModels",
    "REWARD_KINDS",
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
    "generalises",
    "info_nce",
    "listnet_loglik",
    "ndcg_reward",
    "param_checksums",
    "reward_scores",
    "sft_examples",
    "user_dpo_pairs",
]
