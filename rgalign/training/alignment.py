"""Stages 3-6 of SPEC §3, the Ranking-Guided Alignment loop, as resumable stage drivers.

The algorithm's pieces are pure functions in :mod:`rgalign.training.rga`; this module runs them
over a run folder, one stage at a time, each writing ``stages/<i>-<name>[-rR]/`` atomically:

    3 rg-sft     the policy (last reasoner) samples queries; with KB texts ranked by the reward
                 model they form a Best-of-N pool per training request; the reward model (the
                 last QE ranker, on latents from the reasoner it was trained with) scores each
                 candidate; SFT on the best. Writes ``candidates.jsonl`` (pools and rewards).
    4 dpo        DPO on (best, worst) pairs of those pools, reference = the frozen RG-SFT model.
    5 rg-cl      InfoNCE: the prompt's latent query -> the preferred query's latent mixed with the
                 clicked intents' latents; in-batch and KB negatives.
    6 calibrate  the QE ranker re-fitted (warm start) on the aligned reasoner's latent queries,
                 with KL to the previous ranker; its stage.json names the reasoner it reads. A
                 control ranker gets the very same re-fit on the *previous* reasoner's latents:
                 the difference between the two is what alignment buys, net of the extra training.

``--rounds R`` runs 3-6 R times (closed loop): round r > 0 writes ``<i>-<name>-r<r>`` and starts
from round r - 1's reasoner and ranker. Every frozen model's parameters are checksummed before and
after the stage; a change is a `TrainError`, and ``stage.json`` records the check.

Under torchrun every rank builds the same pools (sampling is seeded per chunk, not per rank) and
the training steps are sharded as in stages 1-2.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rgalign.errors import TrainError
from rgalign.io import read_json, write_text_atomic
from rgalign.models.qe_ranker import QERanker
from rgalign.models.reasoner import Reasoner
from rgalign.models.tokenizer import encode_pairs, encode_prompts
from rgalign.training import loops, rga
from rgalign.training.context import (
    Context, ranker_fit_info, compute_latents, load_latents, prefetch_test_latents, require_reasoner, save_latents,
)
from rgalign.artifacts.run import STAGE_NAMES, final_models, latest_qe_ranker_dir
from rgalign.training.distributed import shard
from rgalign.training.evaluate import qe_forward, ranker_metrics

CANDIDATES = "candidates.jsonl"


# ---- shared pieces -----------------------------------------------------------------------------


def _stage_seed(ctx: Context, index: int, round_: int) -> int:
    return ctx.config.seed * 1000 + 100 * round_ + index


def _clicked_rows(ctx: Context, limit: int, seed: int) -> np.ndarray:
    """Training requests with at least one click, a seeded subsample of ``limit`` (sorted)."""
    tr = ctx.splits["train"]
    rows = np.flatnonzero((tr.mask & (tr.labels > 0)).any(axis=1))
    if len(rows) > limit:
        rows = np.sort(np.random.default_rng(seed).choice(rows, limit, replace=False))
    return rows


def _slate(ctx: Context, rows: np.ndarray) -> dict[str, torch.Tensor]:
    tr = ctx.splits["train"]
    return {
        "cat": torch.from_numpy(tr.cat[rows]), "num": torch.from_numpy(tr.num[rows]),
        "shown": torch.from_numpy(tr.shown[rows]), "labels": torch.from_numpy(tr.labels[rows]),
        "mask": torch.from_numpy(tr.mask[rows]),
    }


def _previous_stage(ctx: Context, index: int, round_: int) -> Path:
    """The folder of stage ``index`` of this round, which must have finished."""
    d = ctx.run.stage_dir(index, round_)
    if not ctx.run.finished(index, round_):
        raise TrainError(f"{ctx.run.root}: stage {index + 1} needs stage {index} ({STAGE_NAMES[index]}) of round "
                         f"{round_} first; run `rgalign train` with --stages {index}-{index + 1}")
    return d


class _Frozen:
    """Checksums of models that a stage must not change; `check` raises if one did."""

    def __init__(self, **models: nn.Module) -> None:
        self.models = {k: rga.freeze(m) for k, m in models.items()}
        self.before = {k: rga.param_checksums(m) for k, m in self.models.items()}

    def check(self, stage: str) -> dict[str, bool]:
        out = {}
        for k, m in self.models.items():
            changed = rga.changed_names(self.before[k], rga.param_checksums(m))
            if changed:
                raise TrainError(f"{stage}: the frozen {k} changed ({', '.join(changed[:3])}); this is a bug")
            out[k] = True
        return out


def _read_pools(stage_dir: Path) -> list[dict[str, Any]]:
    with open(stage_dir / CANDIDATES) as f:
        return [json.loads(line) for line in f if line.strip()]


# ---- stage 3: RG-SFT -----------------------------------------------------------------------------


def stage_rg_sft(ctx: Context, round_: int) -> None:
    c = ctx.config.rg_sft
    policy_dir = require_reasoner(ctx, 3)
    reward_reasoner_dir, ranker_dir = final_models(ctx.run)
    policy = Reasoner.load(policy_dir)
    frozen = _Frozen(reward_model=QERanker.load(ranker_dir), reward_reasoner=Reasoner.load(reward_reasoner_dir))
    ranker, reward_reasoner = frozen.models["reward_model"], frozen.models["reward_reasoner"]
    tok = policy.tokenizer
    seed = _stage_seed(ctx, 3, round_)
    rows = _clicked_rows(ctx, c.max_requests, seed)
    if len(rows) == 0:
        raise TrainError("stage 3: no training request has a click; RG-SFT needs clicked intents")
    prompts = [ctx.prompts("train")[r] for r in rows]
    b = _slate(ctx, rows)
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
    best, worst, margin = rga.best_of_n(rewards)
    t_score = time.perf_counter() - t0 - t_sample

    sft_prompts, sft_targets = rga.sft_examples(prompts, cands, best)
    res = loops.train_sft(
        policy, tok, sft_prompts, sft_targets, epochs=c.epochs, batch_size=c.batch_size, lr=c.lr,
        max_len=policy.config.max_len, seed=seed, dist=ctx.dist, description=f"3 RG-SFT (round {round_})",
        quiet=ctx.quiet,
    )
    checks = frozen.check("stage 3")

    kb_keys = {rga.dedup_key(t) for t in kb}
    best_text = [cs[int(i)] for cs, i in zip(cands, best)]
    from_samples = float(np.mean([rga.dedup_key(t) not in kb_keys for t in best_text]))
    request_ids = ctx.splits["train"].request_ids[rows]

    def save(d: Path) -> None:
        policy.save(d / "reasoner")
        lines = [
            json.dumps({"row": int(r), "request_id": str(rid), "candidates": cs, "rewards": [round(float(x), 6) for x in rw],
                        "best": int(bi), "worst": int(wi)})
            for r, rid, cs, rw, bi, wi in zip(rows, request_ids, cands, rewards, best, worst)
        ]
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
        "reward_reasoner": ctx.relative(reward_reasoner_dir), "frozen_unchanged": checks,
    }
    ctx.finish(3, save, info, round_)
    ctx.log(f"stage 3 rg-sft (round {round_}): {len(rows)} requests x {c.n_candidates} candidates, reward "
            f"best {info['reward']['best_mean']:.3f} vs own latent {info['reward']['own_latent_mean']:.3f} "
            f"({100 * from_samples:.0f}% of best sampled), LM loss {res.final_loss:.3f}, {info['seconds']:.0f} s")


def _train_policy(
    ctx: Context,
    policy: Reasoner,
    n_items: int,
    step: Callable[[np.ndarray], tuple[torch.Tensor, dict[str, float]]],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    description: str,
    lengths: np.ndarray | None = None,
) -> loops.LossLog:
    """The loop stages 4 and 5 share: AdamW with a one-cycle schedule over ``epochs`` passes of
    ``n_items`` in seeded, rank-sharded batches (of similar ``lengths`` when given, see
    `loops.epoch_batches`); ``step(idx)`` returns the batch's loss (with its graph) and the floats
    to log (the first is shown on the progress bar)."""
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    steps_per_epoch = math.ceil(math.ceil(n_items / ctx.dist.world_size) / batch_size)
    total = max(1, epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.1)
    log = loops.LossLog()
    policy.train()
    with loops.progress(disable=ctx.quiet or not ctx.dist.is_main) as bar:
        task = bar.add_task(description, total=total, info="")
        for epoch in range(epochs):
            order = shard(rng.permutation(n_items), ctx.dist)
            for idx in loops.epoch_batches(order, batch_size, steps_per_epoch, rng, lengths):
                loss, stats = step(idx)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                log.add(epoch=epoch, step=len(log.rows), **stats)
                bar.update(task, advance=1, info=" ".join(f"{name} {v:.3f}" for name, v in list(stats.items())[:2]))
    policy.eval()
    return log


# ---- stage 4: DPO --------------------------------------------------------------------------------


class _SequenceLogprobs(nn.Module):
    """``Reasoner.sequence_logprobs`` as a module ``forward``, so DDP all-reduces its gradients."""

    def __init__(self, reasoner: nn.Module) -> None:
        super().__init__()
        self.reasoner = reasoner

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.reasoner.sequence_logprobs(input_ids, attention_mask, labels)


def stage_dpo(ctx: Context, round_: int) -> None:
    c = ctx.config.dpo
    src = _previous_stage(ctx, 3, round_)
    pools = _read_pools(src)
    prompts_all = ctx.prompts("train")
    rewards = torch.tensor([p["rewards"] for p in pools], dtype=torch.float32)
    pairs = rga.dpo_pairs([prompts_all[p["row"]] for p in pools], [p["candidates"] for p in pools], rewards,
                          min_margin=c.min_margin)
    available = len(pairs)
    best_margin = rga.best_of_n(rewards)[2] if len(pools) else torch.zeros(0)
    seed = _stage_seed(ctx, 4, round_)
    if len(pairs) > c.max_pairs:
        keep = np.sort(np.random.default_rng(seed).choice(len(pairs), c.max_pairs, replace=False))
        pairs = [pairs[i] for i in keep]
    if not pairs:
        # no preference clears the reward model's noise: it scores the candidate queries (almost)
        # alike, e.g. a ranker that early stopping kept near its start, item popularity, reads
        # little of the latent query. DPO on such pairs would learn the noise: the RG-SFT
        # reasoner goes on unchanged, and stage.json says why (a config can lower dpo.min_margin)
        top = float(best_margin.max()) if len(best_margin) else 0.0
        reason = (f"no (best, worst) pair has a reward margin >= {c.min_margin} among {len(pools)} pools (largest "
                  f"{top:.4f}): the reward model scores the candidate queries almost alike")

        def keep_policy(d: Path) -> None:
            import shutil

            shutil.copytree(src / "reasoner", d / "reasoner")

        ctx.finish(4, keep_policy, {"seconds": 0.0, "pairs": 0, "pairs_available": 0, "pools": len(pools),
                                    "skipped": reason, "policy_from": ctx.relative(src / "reasoner"),
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
    policy = Reasoner.load(src / "reasoner")
    frozen = _Frozen(reference=Reasoner.load(src / "reasoner"))
    reference = frozen.models["reference"]
    tok, max_len = policy.tokenizer, policy.config.max_len
    t0 = time.perf_counter()
    held_before = _dpo_eval(reference, reference, held, c.beta)
    prompts = [p.prompt for p in pairs]
    ref_c = rga.batched_sequence_logprobs(reference, tok, prompts, [p.chosen for p in pairs], batch_size=64)
    ref_r = rga.batched_sequence_logprobs(reference, tok, prompts, [p.rejected for p in pairs], batch_size=64)

    model = loops._wrap(_SequenceLogprobs(policy), ctx.dist, find_unused=True)

    def step(idx: np.ndarray) -> tuple[torch.Tensor, dict[str, float]]:
        n = len(idx)
        enc = encode_pairs(tok, [prompts[i] for i in idx] * 2,
                           [pairs[i].chosen for i in idx] + [pairs[i].rejected for i in idx], max_len)
        logps = model(enc["input_ids"], enc["attention_mask"], enc["labels"]).float()
        return rga.dpo_loss(logps[:n], logps[n:], ref_c[idx], ref_r[idx], beta=c.beta)

    # a pair's rows pad to its longer answer; RG-CL keeps random batches (its in-batch negatives)
    lengths = loops.pair_lengths(tok, prompts, [p.chosen for p in pairs], [p.rejected for p in pairs])
    log = _train_policy(ctx, policy, len(pairs), step, epochs=c.epochs, batch_size=c.batch_size, lr=c.lr,
                        weight_decay=0.0, seed=seed, description=f"4 DPO (round {round_})", lengths=lengths)
    held_after = _dpo_eval(policy, reference, held, c.beta)
    seconds = time.perf_counter() - t0
    checks = frozen.check("stage 4")
    tail = log.rows[-20:]

    def save(d: Path) -> None:
        policy.save(d / "reasoner")
        write_text_atomic(d / "losses.csv", log.to_csv())

    info = {
        "seconds": seconds, "pairs": len(pairs), "pairs_available": available, "pools": len(pools),
        "beta": c.beta, "min_margin": c.min_margin,
        "final_loss": float(np.mean([r["loss"] for r in tail])),
        "final_reward_accuracy": float(np.mean([r["reward_accuracy"] for r in tail])),
        "final_reward_margin": float(np.mean([r["reward_margin"] for r in tail])),
        "pairs_per_s": len(pairs) * c.epochs / seconds,
        "held_out": {"pairs": len(held), **{f"{k}": v for k, v in held_after.items()},
                     "before": held_before, "ln2": math.log(2.0)},
        "policy_from": ctx.relative(src / "reasoner"), "reference": ctx.relative(src / "reasoner"),
        "frozen_unchanged": checks,
    }
    ctx.finish(4, save, info, round_)
    held_txt = (f"; held-out {len(held)} pairs: loss {held_after['loss']:.3f} (ln 2 = 0.693), reward accuracy "
                f"{held_after['reward_accuracy']:.2f}" if held else "")
    ctx.log(f"stage 4 dpo (round {round_}): {len(pairs)} pairs (of {available} over the margin), loss "
            f"{info['final_loss']:.3f}, reward accuracy {info['final_reward_accuracy']:.2f}{held_txt}, {seconds:.0f} s")


@torch.no_grad()
def _dpo_eval(policy: Reasoner, reference: Reasoner, pairs: list, beta: float) -> dict[str, float]:
    """DPO loss and reward accuracy of ``policy`` against ``reference`` on ``pairs`` (no training)."""
    if not pairs:
        return {}
    tok, prompts = policy.tokenizer, [p.prompt for p in pairs]
    args = dict(batch_size=64)
    pc = rga.batched_sequence_logprobs(policy, tok, prompts, [p.chosen for p in pairs], **args)
    pr = rga.batched_sequence_logprobs(policy, tok, prompts, [p.rejected for p in pairs], **args)
    if policy is reference:
        rc, rr = pc, pr
    else:
        rc = rga.batched_sequence_logprobs(reference, tok, prompts, [p.chosen for p in pairs], **args)
        rr = rga.batched_sequence_logprobs(reference, tok, prompts, [p.rejected for p in pairs], **args)
    loss, stats = rga.dpo_loss(pc.float(), pr.float(), rc.float(), rr.float(), beta=beta)
    return {"loss": stats["loss"], "reward_accuracy": stats["reward_accuracy"], "reward_margin": stats["reward_margin"]}


# ---- stage 5: RG-CL ------------------------------------------------------------------------------


def _latents_with_grad(model: nn.Module, tok: Any, prompts: list[str], max_len: int) -> torch.Tensor:
    enc = encode_prompts(tok, prompts, max_len)
    return model(enc["input_ids"], enc["attention_mask"])


@torch.no_grad()
def _kb_retrieval(reasoner: Reasoner, prompts: list[str], clicked: torch.Tensor, kb_latents: torch.Tensor,
                  batch_size: int, k: int = 10) -> dict[str, float]:
    """How well the latent queries point at the clicked intents among the whole KB: the fraction
    of requests with a clicked intent in the top ``k`` KB latents by cosine (``hit@k``) and the
    mean cosine to the clicked ones (``cosine``). clicked: (R, N) bool."""
    if not prompts:
        return {f"hit@{k}": float("nan"), "cosine": float("nan")}
    z = F.normalize(reasoner.encode_prompts(prompts, batch_size=batch_size), dim=-1)
    sim = z @ F.normalize(kb_latents, dim=-1).T  # (R, N)
    top = sim.topk(min(k, sim.shape[1]), dim=1).indices
    hit = clicked.gather(1, top).any(dim=1).float().mean()
    cos = (sim * clicked).sum(1) / clicked.sum(1).clamp(min=1)
    return {f"hit@{k}": float(hit), "cosine": float(cos.mean())}


def stage_rg_cl(ctx: Context, round_: int) -> None:
    c = ctx.config.rg_cl
    src = _previous_stage(ctx, 4, round_)
    pools = {p["row"]: p for p in _read_pools(_previous_stage(ctx, 3, round_))}
    policy = Reasoner.load(src / "reasoner")
    frozen = _Frozen(target_encoder=Reasoner.load(src / "reasoner"))
    snapshot = frozen.models["target_encoder"]
    tok, max_len = policy.tokenizer, policy.config.max_len
    seed = _stage_seed(ctx, 5, round_)
    t0 = time.perf_counter()

    # requests: every stage-3 pool (they have a preferred query), then more clicked requests
    rows = np.array(sorted(pools), dtype=np.int64)
    extra = np.setdiff1d(_clicked_rows(ctx, c.max_requests + len(rows), seed), rows)
    extra = extra[: max(0, c.max_requests - len(rows))]
    prompts_all = ctx.prompts("train")
    kb_latents = snapshot.encode_prompts(list(ctx.encoders.intent_texts), batch_size=ctx.config.infer_batch)
    pref = rga.candidate_latents(
        snapshot, tok, [prompts_all[r] for r in rows], [[pools[r]["candidates"][pools[r]["best"]]] for r in rows]
    ).squeeze(1)
    b3, bx = _slate(ctx, rows), _slate(ctx, extra)
    pos3, has3, neg3 = rga.clicked_intent_targets(kb_latents, b3["shown"], b3["labels"], b3["mask"], pref,
                                                  c.preferred_weight)
    posx, hasx, negx = rga.clicked_intent_targets(kb_latents, bx["shown"], bx["labels"], bx["mask"])
    all_rows = np.concatenate([rows, extra])
    positives, has, neg_mask = torch.cat([pos3, posx]), torch.cat([has3, hasx]), torch.cat([neg3, negx])
    keep = has.numpy()
    all_rows, positives, neg_mask = all_rows[keep], positives[keep], neg_mask[keep]
    prompts = [prompts_all[r] for r in all_rows]

    # held-out alignment: do valid requests' latent queries point at their clicked intents?
    va = ctx.splits["valid"]
    vrows = np.flatnonzero((va.mask & (va.labels > 0)).any(axis=1))[:500]
    _, _, not_clicked = rga.clicked_intent_targets(
        kb_latents, torch.from_numpy(va.shown[vrows]), torch.from_numpy(va.labels[vrows]), torch.from_numpy(va.mask[vrows])
    )
    vprompts = [ctx.prompts("valid")[r] for r in vrows]
    before = _kb_retrieval(policy, vprompts, ~not_clicked, kb_latents, ctx.config.infer_batch)

    model = loops._wrap(policy, ctx.dist, find_unused=True)  # the LM head gets no gradient here
    negatives = kb_latents if c.kb_negatives else None

    def step(idx: np.ndarray) -> tuple[torch.Tensor, dict[str, float]]:
        anchor = _latents_with_grad(model, tok, [prompts[i] for i in idx], max_len)
        loss = rga.info_nce(anchor, positives[idx], negatives, c.temperature,
                            neg_mask[idx] if negatives is not None else None)
        return loss, {"info_nce": float(loss.detach())}

    log = _train_policy(ctx, policy, len(prompts), step, epochs=c.epochs, batch_size=c.batch_size, lr=c.lr,
                        weight_decay=0.01, seed=seed, description=f"5 RG-CL (round {round_})")
    after = _kb_retrieval(policy, vprompts, ~not_clicked, kb_latents, ctx.config.infer_batch)
    seconds = time.perf_counter() - t0
    checks = frozen.check("stage 5")

    def save(d: Path) -> None:
        policy.save(d / "reasoner")
        write_text_atomic(d / "losses.csv", log.to_csv())

    info = {
        "seconds": seconds, "requests": len(prompts), "with_preferred_query": int(keep[: len(rows)].sum()),
        "temperature": c.temperature, "preferred_weight": c.preferred_weight, "kb_negatives": c.kb_negatives,
        "first_loss": log.rows[0]["info_nce"] if log.rows else math.nan,
        "final_loss": float(np.mean([r["info_nce"] for r in log.rows[-20:]])) if log.rows else math.nan,
        "valid_kb_retrieval": {"before": before, "after": after},
        "policy_from": ctx.relative(src / "reasoner"), "frozen_unchanged": checks,
    }
    ctx.finish(5, save, info, round_)
    ctx.log(f"stage 5 rg-cl (round {round_}): {len(prompts)} requests, InfoNCE {info['first_loss']:.3f} -> "
            f"{info['final_loss']:.3f}, valid clicked intent in the latent's KB top-10 {before['hit@10']:.3f} -> "
            f"{after['hit@10']:.3f}, {seconds:.0f} s")


# ---- stage 6: calibrate --------------------------------------------------------------------------


def _calibration_rows(ctx: Context) -> np.ndarray | None:
    """The training requests stage 6 re-fits on (sorted positions), or None for all of them. Drawn
    with the run's seed alone, so every round (and its control) re-fits on the same requests."""
    n, k = len(ctx.splits["train"]), ctx.config.calibrate.max_requests
    if k is None or k >= n:
        return None
    return np.sort(np.random.default_rng([ctx.config.seed, 6]).choice(n, k, replace=False))


def stage_calibrate(ctx: Context, round_: int) -> None:
    c = ctx.config.calibrate
    reasoner_dir = _previous_stage(ctx, 5, round_) / "reasoner"
    prev_dir = latest_qe_ranker_dir(ctx.run)
    if prev_dir is None:
        raise TrainError(f"{ctx.run.root}: stage 6 needs a QE ranker to start from; run stage 2 first")
    prev_reasoner_dir = ctx.run.root / read_json(prev_dir.parent / "stage.json")["reasoner"]
    frozen = _Frozen(reasoner=Reasoner.load(reasoner_dir), previous_ranker=QERanker.load(prev_dir))
    reasoner, previous = frozen.models["reasoner"], frozen.models["previous_ranker"]
    seed = _stage_seed(ctx, 6, round_)
    rows = _calibration_rows(ctx)
    train = ctx.splits["train"] if rows is None else ctx.splits["train"].subset(rows)
    t0 = time.perf_counter()
    q = compute_latents(ctx, reasoner, ["train", "valid"], rows)
    latent_seconds = time.perf_counter() - t0

    def refit(query: dict[str, torch.Tensor], text_emb: torch.Tensor, label: str,
              intent_latent: torch.Tensor) -> tuple[QERanker, Any]:
        model = QERanker.load(prev_dir)  # warm start; the KL term keeps it near the previous ranker
        model.intent_ids.freeze_bias()  # the popularity offset stays as stage 2 set it
        model.set_intent_text_emb(text_emb)
        model.set_intent_latents(intent_latent)
        res = loops.train_ranker(
            model, qe_forward, train, ctx.splits["valid"], epochs=c.epochs, batch_size=c.batch_size,
            patience=c.patience, min_check_steps=c.min_check_steps,
            lr=c.lr, weight_decay=c.weight_decay, alpha_bce=c.alpha_bce, seed=seed, dist=ctx.dist,
            train_query=query["train"], valid_query=query["valid"], previous=previous, beta_kl=c.beta_kl,
            description=label, quiet=ctx.quiet,
        )
        return model, res

    # the re-fits use one core; the other meanwhile encodes the test split with this round's
    # reasoners (stages 5, 4, 3), for the evaluation at the end of the run
    this_round = [reasoner_dir] + [_previous_stage(ctx, i, round_) / "reasoner" for i in (4, 3)]
    with prefetch_test_latents(ctx, this_round):
        kb = list(ctx.encoders.intent_texts)
        model, res = refit(q, reasoner.encode_texts(kb), f"6 calibrate (round {round_})",
                           reasoner.encode_prompts(kb, batch_size=ctx.config.infer_batch))
        valid = ranker_metrics(model, ctx.splits["valid"], q["valid"], k=ctx.config.eval_k) if ctx.dist.is_main else {}
        control = control_res = None
        control_valid: dict[str, float] = {}
        if c.control:
            # the same re-fit on the previous reasoner's latents: what the extra ranker training alone buys
            q_prev = load_latents(ctx, prev_dir.parent, prev_reasoner_dir, rows)
            control, control_res = refit(q_prev, previous.intent_text_emb.clone(), f"6 control re-fit (round {round_})",
                                         previous.intent_latent.clone())
            if ctx.dist.is_main:
                control_valid = ranker_metrics(control, ctx.splits["valid"], q_prev["valid"], k=ctx.config.eval_k)
    checks = frozen.check("stage 6")

    def save(d: Path) -> None:
        model.save(d / "ranker")
        save_latents(d, q, rows)
        write_text_atomic(d / "losses.csv", res.log.to_csv())
        if control is not None:
            control.save(d / "control_ranker")

    info = {
        "seconds": time.perf_counter() - t0, "ranker_seconds": res.seconds, "latent_seconds": latent_seconds,
        "impressions_per_s": res.impressions_per_s, "best_epoch": res.best_epoch, "beta_kl": c.beta_kl,
        **ranker_fit_info(res),
        "requests": len(train),
        "valid": valid, "reasoner": ctx.relative(reasoner_dir), "previous_ranker": ctx.relative(prev_dir),
        "frozen_unchanged": checks,
    }
    if control is not None:
        info["control"] = {"valid": control_valid, "reasoner": ctx.relative(prev_reasoner_dir),
                           "seconds": control_res.seconds, "best_epoch": control_res.best_epoch}
    ctx.finish(6, save, info, round_)
    extra = f", control re-fit without RGA {control_valid.get('gauc', float('nan')):.4f}" if control is not None else ""
    ctx.log(f"stage 6 calibrate (round {round_}): valid GAUC {valid.get('gauc', float('nan')):.4f}{extra}, latents "
            f"{latent_seconds:.0f} s, ranker {res.seconds:.0f} s")


RGA_STAGES = {3: stage_rg_sft, 4: stage_dpo, 5: stage_rg_cl, 6: stage_calibrate}
