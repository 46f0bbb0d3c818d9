"""Stage 4, DPO on the (best, worst) pairs of stage 3's pools, the RG-SFT model as the frozen
reference; skipped, with its reason, when no pair clears the reward model's noise margin."""

from __future__ import annotations

import contextlib
import functools
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rgalign.io import write_text_atomic
from rgalign.models.reasoner import Reasoner
from rgalign.models.tokenizer import encode_pairs
from rgalign.errors import TrainError
from rgalign.training import finetune, loops, rga
from rgalign.training.context import Context
from rgalign.training.alignment.common import (
    previous_stage, read_pools, stage_seed, stage_state_dir, train_policy,
)
from rgalign.training.distributed import all_reduce_sum
from rgalign.training.global_sft import drop_stage_state
from rgalign.training.parallel import dist_record
from rgalign.training.shard_data import share


class _SequenceLogprobs(nn.Module):
    """``Reasoner.sequence_logprobs`` as a module ``forward``, so DDP all-reduces its gradients."""

    def __init__(self, reasoner: nn.Module) -> None:
        super().__init__()
        self.reasoner = reasoner

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.reasoner.sequence_logprobs(input_ids, attention_mask, labels)


def stage_dpo(ctx: Context, round_: int) -> None:
    c = ctx.config.dpo
    src = previous_stage(ctx, 3, round_)
    pools = read_pools(src, ctx)  # sharded data: this rank's
    prompts_all = ctx.prompts("train")
    rewards = torch.tensor([p["rewards"] for p in pools], dtype=torch.float32)
    pool_prompts, pool_cands = [prompts_all[p["row"]] for p in pools], [p["candidates"] for p in pools]
    if c.pairs == "user":
        if any("user_rewards" not in p for p in pools):
            raise TrainError(f"{ctx.relative(src)}: its pools have no per-user rewards (stage 3 ran with dpo.pairs: "
                             "request); re-run stage 3 (--stages 3-6), or set dpo.pairs: request")
        pairs = rga.user_dpo_pairs(pool_prompts, pool_cands, [torch.tensor(p["user_rewards"]) for p in pools],
                                   min_margin=c.min_margin)
    else:
        pairs = rga.dpo_pairs(pool_prompts, pool_cands, rewards, min_margin=c.min_margin)
    available = len(pairs)
    best_margin = rga.best_of_n(rewards)[2] if len(pools) else torch.zeros(0)
    seed = stage_seed(ctx, 4, round_)
    max_pairs = share(c.max_pairs, len(pairs), ctx.dist)  # sharded data: this rank's part
    if len(pairs) > max_pairs:
        keep = np.sort(np.random.default_rng(seed).choice(len(pairs), max_pairs, replace=False))
        pairs = [pairs[i] for i in keep]
    if not all_reduce_sum(float(len(pairs)), ctx.dist):  # no rank has one: every rank skips alike
        # no preference clears the reward model's noise: it scores the candidate queries (almost)
        # alike, e.g. a ranker that early stopping kept near its start, item popularity, reads
        # little of the latent query. DPO on such pairs would learn the noise: the RG-SFT
        # reasoner goes on unchanged, and stage.json says why (a config can lower dpo.min_margin)
        top = float(best_margin.max()) if len(best_margin) else 0.0
        if c.pairs == "user":
            reason = (f"no pool's (best, worst) preference holds over its user's requests (mean difference above "
                      f"its standard error and >= {c.min_margin}/sqrt(requests)) among {len(pools)} pools (largest "
                      f"one-slate margin {top:.4f}): the reward model scores the candidate queries almost alike")
        else:
            reason = (f"no (best, worst) pair has a reward margin >= {c.min_margin} among {len(pools)} pools "
                      f"(largest {top:.4f}): the reward model scores the candidate queries almost alike")

        def keep_policy(d: Path) -> None:
            import shutil

            shutil.copytree(src / "reasoner", d / "reasoner")

        ctx.finish(4, keep_policy, {"seconds": 0.0, "pairs": 0, "pairs_available": 0, "pools": len(pools), "pair_construction": c.pairs,
                                    "skipped": reason, "dpo_kept": False, "policy_from": ctx.relative(src / "reasoner"),
                                    "reference": ctx.relative(src / "reasoner"),
                                    "frozen_unchanged": {"reference": True}}, round_)  # copied, never loaded
        ctx.log(f"stage 4 dpo (round {round_}): skipped, {reason}")
        return
    # a held-out share of the pairs, never trained on: whether DPO learned a preference that
    # generalises (reward accuracy, loss vs ln 2) is read on them, not on the training batches
    n_held = int(round(c.held_out_fraction * len(pairs))) if len(pairs) >= 10 else 0
    perm = np.random.default_rng(seed + 7).permutation(len(pairs))
    held = [pairs[i] for i in np.sort(perm[:n_held])]
    pairs = [pairs[i] for i in np.sort(perm[n_held:])]
    n_pairs = len(pairs)
    if not pairs:  # sharded data, another rank has pairs: steps on a blank stand-in at weight 0
        pairs = [rga.DPOPair("", " ", " ")]
    policy = Reasoner.load(src / "reasoner")
    tuning = finetune.start(policy, ctx.config)
    if tuning.plan.lora:
        # the reference is the policy with its adapters off: the RG-SFT weights, no second copy
        reference, frozen = tuning.base_model, None
    else:  # full fine-tuning moves the weights themselves: a frozen copy, as always
        frozen = rga.FrozenModels(reference=Reasoner.load(src / "reasoner"))
        reference = functools.partial(contextlib.nullcontext, frozen.models["reference"])
    tok, max_len = policy.tokenizer, policy.config.max_len
    t0 = time.perf_counter()
    prompts = [p.prompt for p in pairs]
    with reference() as ref:
        # the reference is frozen: its log-probabilities are constants, computed once
        held_ref = _pair_logprobs(ref, held)
        # what the LoRA reference check recomputes after training: the held-out pairs, or a few
        probe = held or pairs[:16]
        probe_ref = held_ref if held else (_pair_logprobs(ref, probe) if frozen is None else None)
        ref_c = rga.batched_sequence_logprobs(ref, tok, prompts, [p.chosen for p in pairs], batch_size=64)
        ref_r = rga.batched_sequence_logprobs(ref, tok, prompts, [p.rejected for p in pairs], batch_size=64)
    held_before = _dpo_eval(held_ref, held_ref, c.beta)

    def step(model: nn.Module, batch: np.ndarray, local: np.ndarray) -> tuple[torch.Tensor, int, dict[str, float]]:
        # this rank's pairs of the global batch; the DPO loss is a mean over pairs
        idx, dev = batch[local], next(model.parameters()).device
        n = len(idx)
        enc = encode_pairs(tok, [prompts[i] for i in idx] * 2,
                           [pairs[i].chosen for i in idx] + [pairs[i].rejected for i in idx], max_len)
        logps = model(enc["input_ids"].to(dev), enc["attention_mask"].to(dev), enc["labels"].to(dev)).float().cpu()
        loss, stats = rga.dpo_loss(logps[:n], logps[n:], ref_c[idx], ref_r[idx], beta=c.beta)
        return loss, n, stats

    # a pair's rows pad to its longer answer; RG-CL keeps random batches (its in-batch negatives)
    lengths = loops.pair_lengths(tok, prompts, [p.chosen for p in pairs], [p.rejected for p in pairs])
    log = train_policy(ctx, _SequenceLogprobs(policy), n_pairs, step, index=4, round_=round_, epochs=c.epochs,
                        batch_size=c.batch_size, lr=c.lr, weight_decay=0.0, seed=seed,
                        description=f"4 DPO (round {round_})", lengths=lengths, autocast=tuning.autocast)
    held_after = _dpo_eval(_pair_logprobs(policy, held), held_ref, c.beta)
    if frozen is not None:
        checks = frozen.check("stage 4")
    else:
        checks = {"reference": _reference_unchanged(reference, probe, probe_ref)}
    tuning.merge()
    seconds = time.perf_counter() - t0
    tail = log.rows[-20:]
    # what DPO learned is kept only if it generalises: held-out accuracy over chance by more than its
    # standard error; otherwise the RG-SFT reasoner goes on to stage 5 (the trained one is dropped)
    check = rga.generalises(held_after.get("reward_accuracy"), len(held))
    kept = check["kept"] or not c.require_generalisation

    def save(d: Path) -> None:
        if kept:
            policy.save(d / "reasoner")
        else:
            import shutil

            shutil.copytree(src / "reasoner", d / "reasoner")
        write_text_atomic(d / "losses.csv", log.to_csv())

    info = {
        "seconds": seconds, "pairs": n_pairs, "pairs_available": available, "pools": len(pools),
        "pair_construction": c.pairs, "beta": c.beta, "min_margin": c.min_margin,
        "final_loss": float(np.mean([r["loss"] for r in tail])),
        "final_reward_accuracy": float(np.mean([r["reward_accuracy"] for r in tail])),
        "final_reward_margin": float(np.mean([r["reward_margin"] for r in tail])),
        "pairs_per_s": n_pairs * c.epochs / seconds,
        "held_out": {"pairs": len(held), **{f"{k}": v for k, v in held_after.items()},
                     "before": held_before, "ln2": math.log(2.0)},
        "policy_from": ctx.relative(src / "reasoner"), "reference": ctx.relative(src / "reasoner"),
        "frozen_unchanged": checks, "finetune": tuning.info(), "dist": dist_record(ctx.dist, policy),
        "dpo_kept": kept, "generalisation": {**check, "required": c.require_generalisation},
    }
    if not kept:
        info["output"] = (f"the input reasoner ({ctx.relative(src / 'reasoner')}): held-out reward accuracy "
                          f"{_fmt(check['reward_accuracy'])} over {len(held)} pairs does not beat chance 0.5 by more "
                          f"than its standard error {_fmt(check['standard_error'])}")
    ctx.finish(4, save, info, round_)
    drop_stage_state(ctx.dist, stage_state_dir(ctx, 4, round_))
    held_txt = (f"; held-out {len(held)} pairs: loss {held_after['loss']:.3f} (ln 2 = 0.693), reward accuracy "
                f"{held_after['reward_accuracy']:.2f}" if held else "")
    ctx.log(f"stage 4 dpo (round {round_}): {n_pairs} pairs (of {available} over the margin), loss "
            f"{info['final_loss']:.3f}, reward accuracy {info['final_reward_accuracy']:.2f}{held_txt}, {seconds:.0f} s"
            + ("" if kept else f"; not kept, stage 5 gets {info['output']}"))


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _pair_logprobs(model: Reasoner, pairs: list) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(chosen, rejected) summed log-probabilities of ``pairs`` under ``model`` (eval, no grad),
    None without pairs."""
    if not pairs:
        return None
    tok, prompts = model.tokenizer, [p.prompt for p in pairs]
    return (rga.batched_sequence_logprobs(model, tok, prompts, [p.chosen for p in pairs], batch_size=64),
            rga.batched_sequence_logprobs(model, tok, prompts, [p.rejected for p in pairs], batch_size=64))


def _dpo_eval(policy: tuple[torch.Tensor, torch.Tensor] | None, reference: tuple[torch.Tensor, torch.Tensor] | None,
              beta: float) -> dict[str, float]:
    """DPO loss and reward accuracy of the policy's (chosen, rejected) log-probabilities against
    the reference's, on the same pairs (no training); {} without pairs."""
    if policy is None or reference is None:
        return {}
    (pc, pr), (rc, rr) = policy, reference
    loss, stats = rga.dpo_loss(pc.float(), pr.float(), rc.float(), rr.float(), beta=beta)
    return {"loss": stats["loss"], "reward_accuracy": stats["reward_accuracy"], "reward_margin": stats["reward_margin"]}


def _reference_unchanged(reference, pairs: list, before: tuple[torch.Tensor, torch.Tensor]) -> bool:
    """The LoRA reference's frozen-model check: after training, the policy with its adapters off
    gives the very log-probabilities it gave before (bit for bit), so training moved the adapters
    only and the reference was the RG-SFT model throughout. A checksum of 0.6B weights, as the
    frozen copy gets, would cost a float64 pass over them; this costs one forward of <= 16 pairs."""
    with reference() as ref:
        after = _pair_logprobs(ref, pairs)
    if after is None or not all(torch.equal(a, b) for a, b in zip(after, before)):
        raise TrainError("stage 4: the DPO reference (the policy with its LoRA adapters off) changed; this is a bug")
    return True
