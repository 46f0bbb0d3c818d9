"""Stage 5, RG-CL: InfoNCE from the prompt's latent query to the preferred query's latent mixed with
the clicked intents' latents, with in-batch and KB negatives."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rgalign.io import write_text_atomic
from rgalign.models.reasoner import Reasoner
from rgalign.models.tokenizer import encode_prompts
from rgalign.training import finetune, rga
from rgalign.training.context import Context
from rgalign.training.distributed import all_gather_object
from rgalign.training.shard_data import share
from rgalign.training.alignment.common import (
    clicked_rows, previous_stage, read_pools, slate, stage_seed, stage_state_dir, train_policy,
)
from rgalign.training.global_sft import drop_stage_state
from rgalign.training.parallel import dist_record


def _latents_with_grad(model: nn.Module, tok: Any, prompts: list[str], max_len: int) -> torch.Tensor:
    enc = encode_prompts(tok, prompts, max_len)
    dev = next(model.parameters()).device
    return model(enc["input_ids"].to(dev), enc["attention_mask"].to(dev))


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


def _merged(ctx: Context, means: dict[str, float], n: int) -> dict[str, float]:
    """Means over this rank's ``n`` requests -> over every rank's (the data sharded: each rank
    checks up to 500 of its own valid requests)."""
    if not ctx.dist.data_sharded:
        return means
    parts = [(m, k) for m, k in all_gather_object((means, n), ctx.dist) if k]
    total = sum(k for _, k in parts)
    return {name: sum(m[name] * k for m, k in parts) / total if total else float("nan") for name in means}


def stage_rg_cl(ctx: Context, round_: int) -> None:
    c = ctx.config.rg_cl
    src = previous_stage(ctx, 4, round_)
    pools = {p["row"]: p for p in read_pools(previous_stage(ctx, 3, round_), ctx)}  # sharded data: this rank's
    policy = Reasoner.load(src / "reasoner")
    lora = finetune.start_plan(policy, ctx.config).lora
    if lora:
        # the targets below are computed before training, from the policy as loaded (its adapters
        # go in after): the target encoder it was, without a second copy of the weights
        frozen, snapshot = None, policy
    else:  # as always: a frozen copy, checksummed after training
        frozen = rga.FrozenModels(target_encoder=Reasoner.load(src / "reasoner"))
        snapshot = frozen.models["target_encoder"]
    tok, max_len = policy.tokenizer, policy.config.max_len
    seed = stage_seed(ctx, 5, round_)
    t0 = time.perf_counter()

    # requests: every stage-3 pool (they have a preferred query), then more clicked requests
    rows = np.array(sorted(pools), dtype=np.int64)
    tr = ctx.splits["train"]
    cap = share(c.max_requests, int((tr.mask & (tr.labels > 0)).any(axis=1).sum()), ctx.dist)  # sharded: this rank's part
    extra = np.setdiff1d(clicked_rows(ctx, cap + len(rows), seed, shared=False), rows)
    extra = extra[: max(0, cap - len(rows))]
    prompts_all = ctx.prompts("train")
    kb_latents = snapshot.encode_prompts(list(ctx.encoders.intent_texts), batch_size=ctx.config.infer_batch)
    pref = rga.candidate_latents(
        snapshot, tok, [prompts_all[r] for r in rows], [[pools[r]["candidates"][pools[r]["best"]]] for r in rows]
    ).squeeze(1)
    b3, bx = slate(ctx, rows), slate(ctx, extra)
    pos3, has3, neg3 = rga.clicked_intent_targets(kb_latents, b3["shown"], b3["labels"], b3["mask"], pref,
                                                  c.preferred_weight)
    posx, hasx, negx = rga.clicked_intent_targets(kb_latents, bx["shown"], bx["labels"], bx["mask"])
    all_rows = np.concatenate([rows, extra])
    positives, has, neg_mask = torch.cat([pos3, posx]), torch.cat([has3, hasx]), torch.cat([neg3, negx])
    keep = has.numpy()
    all_rows, positives, neg_mask = all_rows[keep], positives[keep], neg_mask[keep]
    prompts = [prompts_all[r] for r in all_rows]
    n_requests = len(prompts)
    if not prompts:  # sharded data, this rank has no request: steps on a blank stand-in at weight 0
        prompts = [""]
        positives, neg_mask = torch.zeros(1, kb_latents.shape[1]), torch.ones(1, len(kb_latents), dtype=torch.bool)

    # held-out alignment: do valid requests' latent queries point at their clicked intents?
    va = ctx.splits["valid"]
    vrows = np.flatnonzero((va.mask & (va.labels > 0)).any(axis=1))
    vrows = vrows[: share(500, len(vrows), ctx.dist)]  # sharded data: this rank's part of the 500
    _, _, not_clicked = rga.clicked_intent_targets(
        kb_latents, torch.from_numpy(va.shown[vrows]), torch.from_numpy(va.labels[vrows]), torch.from_numpy(va.mask[vrows])
    )
    vprompts = [ctx.prompts("valid")[r] for r in vrows]
    before = _merged(ctx, _kb_retrieval(policy, vprompts, ~not_clicked, kb_latents, ctx.config.infer_batch), len(vprompts))

    tuning = finetune.start(policy, ctx.config)  # after the targets: see `snapshot` above
    negatives = kb_latents if c.kb_negatives else None

    def step(model: nn.Module, batch: np.ndarray, local: np.ndarray) -> tuple[torch.Tensor, int, dict[str, float]]:
        # this rank's anchors against the positives of the whole global batch (its in-batch
        # negatives, constants): the loss terms one process computes for these rows. With the data
        # sharded the batch is this rank's own (`global_loop.LocalRows`): its in-batch negatives too
        idx = batch[local]
        anchor = _latents_with_grad(model, tok, [prompts[i] for i in idx], max_len)
        loss = rga.info_nce(anchor, positives[batch], negatives, c.temperature,
                            neg_mask[idx] if negatives is not None else None, targets=torch.from_numpy(local))
        return loss, len(idx), {"info_nce": float(loss.detach())}

    log = train_policy(ctx, policy, n_requests, step, index=5, round_=round_, epochs=c.epochs,
                        batch_size=c.batch_size, lr=c.lr, weight_decay=0.01, seed=seed,
                        description=f"5 RG-CL (round {round_})", autocast=tuning.autocast)
    tuning.merge()
    after = _merged(ctx, _kb_retrieval(policy, vprompts, ~not_clicked, kb_latents, ctx.config.infer_batch), len(vprompts))
    seconds = time.perf_counter() - t0
    # with LoRA the targets are constants computed before any training step: nothing to guard
    checks = frozen.check("stage 5") if frozen is not None else {}

    def save(d: Path) -> None:
        policy.save(d / "reasoner")
        write_text_atomic(d / "losses.csv", log.to_csv())

    info = {
        "seconds": seconds, "requests": n_requests, "with_preferred_query": int(keep[: len(rows)].sum()),
        "temperature": c.temperature, "preferred_weight": c.preferred_weight, "kb_negatives": c.kb_negatives,
        "first_loss": log.rows[0]["info_nce"] if log.rows else math.nan,
        "final_loss": float(np.mean([r["info_nce"] for r in log.rows[-20:]])) if log.rows else math.nan,
        "valid_kb_retrieval": {"before": before, "after": after},
        "policy_from": ctx.relative(src / "reasoner"), "frozen_unchanged": checks,
        "finetune": tuning.info(), "dist": dist_record(ctx.dist, policy),
    }
    if frozen is None:
        info["target_encoder"] = "the policy before training (LoRA: no copy kept)"
    ctx.finish(5, save, info, round_)
    drop_stage_state(ctx.dist, stage_state_dir(ctx, 5, round_))
    ctx.log(f"stage 5 rg-cl (round {round_}): {n_requests} requests, InfoNCE {info['first_loss']:.3f} -> "
            f"{info['final_loss']:.3f}, valid clicked intent in the latent's KB top-10 {before['hit@10']:.3f} -> "
            f"{after['hit@10']:.3f}, {seconds:.0f} s")
