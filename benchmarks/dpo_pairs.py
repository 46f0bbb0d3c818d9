"""Does DPO generalise with more or better pairs? Stage 4 re-run on a finished run's stage-3 pools
with other ways of building the preference pairs; each is trained exactly as stage 4 trains
(DPOConfig's beta, rate, epochs, batch; the RG-SFT reasoner as policy start and frozen reference)
and judged on its own held-out requests (10%, never trained on): reward accuracy vs chance and
its binomial standard error (`rga.generalises`), loss vs ln 2.

    .venv/bin/python benchmarks/dpo_pairs.py DATA RUN --json OUT.json [--kinds best_worst,clear,all_pairs,user]

Pair constructions (pools: stage 3's Best-of-N candidates and their rewards, one pool a request):
  best_worst  stage 4's own: (best, worst) per request, margin >= dpo.min_margin
  clear       requests with a clear winner only: best - second best > the std of the pool's rewards
  all_pairs   every (better, worse) pair of a pool whose reward gap >= dpo.min_margin (more pairs
              from the same requests; held out by request)
  user        stage 4's default since this benchmark measured it (`rga.user_dpo_pairs`): each
              candidate's reward on up to dpo.user_requests clicked training requests of the same
              user (stored by stage 3 in the pools), (best, worst) by the mean, kept when the
              per-request differences have a mean above their standard error and
              >= dpo.min_margin / sqrt(requests). (The stored results/realdata/dpo_pairs_* were
              measured by this script's earlier version, which scored the user's slates itself
              from runs made before stage 3 stored them: 7 other requests drawn by another seed.)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rgalign.models.prompt import build_target  # noqa: E402
from rgalign.models.reasoner import Reasoner  # noqa: E402
from rgalign.models.tokenizer import encode_pairs  # noqa: E402
from rgalign.training import loops, rga, trainer  # noqa: E402
from rgalign.training.alignment.common import read_pools, train_policy  # noqa: E402
from rgalign.training.alignment.dpo import _dpo_eval, _pair_logprobs  # noqa: E402
from rgalign.training.config import TrainConfig  # noqa: E402
from rgalign.training.distributed import DistInfo  # noqa: E402

KINDS = ("best_worst", "clear", "all_pairs", "user")
MAX_PAIRS = 2000  # all_pairs: a seeded sample (stage 4's max_pairs is 500)


def pairs_of(kind: str, pools: list[dict], prompts: list[str], rewards: torch.Tensor, min_margin: float,
             per_request: list[torch.Tensor] | None = None) -> list[tuple]:
    """Per pool (request): (its training pairs, its (best, worst) pair or None), DPOPairs."""
    out: list[tuple] = []
    for k, (p, prompt, r) in enumerate(zip(pools, prompts, rewards)):
        cands = p["candidates"]
        order = torch.argsort(r, descending=True, stable=True).tolist()
        best, worst = order[0], order[-1]
        gap = float(r[best] - r[worst])
        one = [rga.DPOPair(prompt, build_target([cands[best]]), build_target([cands[worst]]))] \
            if gap > 0 and gap >= min_margin and rga.dedup_key(cands[best]) != rga.dedup_key(cands[worst]) else []
        if kind == "user":  # stage 4's default (`rga.user_dpo_pairs`)
            ps = rga.user_dpo_pairs([prompt], [cands], [per_request[k]], min_margin)
            out.append((ps, ps[0] if ps else None))
        elif kind == "best_worst":
            out.append((one, one[0] if one else None))
        elif kind == "clear":
            clear = len(order) > 1 and float(r[order[0]] - r[order[1]]) > float(r.std())
            out.append((one, one[0]) if clear and one else ([], None))
        elif kind == "all_pairs":
            ps = [rga.DPOPair(prompt, build_target([cands[i]]), build_target([cands[j]]))
                  for a, i in enumerate(order) for j in order[a + 1:]
                  if float(r[i] - r[j]) >= max(min_margin, 1e-9) and rga.dedup_key(cands[i]) != rga.dedup_key(cands[j])]
            out.append((ps, one[0] if one else None))
    return out


def run_kind(ctx, kind: str, src: Path, per_pool: list[list], seed: int) -> dict:
    c = ctx.config.dpo
    pooled = [i for i, (ps, head) in enumerate(per_pool) if ps and head is not None]
    rng = np.random.default_rng(seed + 7)
    n_held = int(round(c.held_out_fraction * len(pooled)))
    held_pools = set(rng.permutation(pooled)[:n_held].tolist())
    # held out: one pair per held-out request, its (best, worst) one, so the held-out figure and its
    # standard error count independent requests whatever the construction trains on
    held = [per_pool[i][1] for i in sorted(held_pools)]
    train = [p for i in pooled if i not in held_pools for p in per_pool[i][0]]
    cap = MAX_PAIRS if kind == "all_pairs" else c.max_pairs
    if len(train) > cap:
        train = [train[i] for i in np.sort(np.random.default_rng(seed).choice(len(train), cap, replace=False))]
    if not train or not held:
        return {"kind": kind, "train_pairs": len(train), "held_pairs": len(held), "skipped": "too few pairs"}
    policy = Reasoner.load(src)
    reference = Reasoner.load(src)
    tok = policy.tokenizer
    t0 = time.perf_counter()
    prompts = [p.prompt for p in train]
    held_ref = _pair_logprobs(reference, held)
    ref_c = rga.batched_sequence_logprobs(reference, tok, prompts, [p.chosen for p in train], batch_size=64)
    ref_r = rga.batched_sequence_logprobs(reference, tok, prompts, [p.rejected for p in train], batch_size=64)

    def step(model, batch, local):  # stage 4's step, one process: the whole batch is local
        idx = batch[local]
        n = len(idx)
        enc = encode_pairs(tok, [prompts[i] for i in idx] * 2,
                           [train[i].chosen for i in idx] + [train[i].rejected for i in idx], policy.config.max_len)
        logps = model.sequence_logprobs(enc["input_ids"], enc["attention_mask"], enc["labels"]).float()
        loss, stats = rga.dpo_loss(logps[:n], logps[n:], ref_c[idx], ref_r[idx], beta=c.beta)
        return loss, n, stats

    lengths = loops.pair_lengths(tok, prompts, [p.chosen for p in train], [p.rejected for p in train])
    train_policy(ctx, policy, len(train), step, index=4, round_=0, epochs=c.epochs, batch_size=c.batch_size, lr=c.lr,
                       weight_decay=0.0, seed=seed, description=f"DPO {kind}", lengths=lengths)
    after = _dpo_eval(_pair_logprobs(policy, held), held_ref, c.beta)
    train_after = _dpo_eval(_pair_logprobs(policy, train[:200]),
                            (ref_c[:200], ref_r[:200]), c.beta)
    chosen_kb = float(np.mean([p.chosen.strip() in KB for p in train]))
    rejected_kb = float(np.mean([p.rejected.strip() in KB for p in train]))
    chosen = {p.chosen for p in train}
    overlap = float(np.mean([t in {p.rejected for p in train} for t in chosen]))
    return {"kind": kind, "train_pairs": len(train), "train_requests": len(pooled) - n_held, "held_pairs": len(held),
            "held_out": after, "train_sample": train_after, "check": rga.generalises(after["reward_accuracy"], len(held)),
            "chosen_is_kb_text": chosen_kb, "rejected_is_kb_text": rejected_kb,
            "chosen_texts_also_rejected": overlap, "seconds": time.perf_counter() - t0}


KB: set[str] = set()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("run", type=Path)
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--kinds", default=",".join(KINDS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    run_json = json.loads((args.run / "run.json").read_text())
    cfg = TrainConfig.from_dict(run_json["config"])
    ctx = trainer.prepare(args.data, args.run, cfg, DistInfo(), log=print, quiet=True)
    KB.update(ctx.encoders.intent_texts)
    src3 = args.run / "stages" / "3-rg-sft"
    pools = read_pools(src3)
    prompts_all = ctx.prompts("train")
    prompts = [prompts_all[p["row"]] for p in pools]
    rewards = torch.tensor([p["rewards"] for p in pools], dtype=torch.float32)
    seed = cfg.seed * 1000 + 4
    results = {"run": str(args.run), "pools": len(pools), "min_margin": cfg.dpo.min_margin, "kinds": {}}
    for kind in args.kinds.split(","):
        t0 = time.perf_counter()
        per = None
        if kind == "user":  # stage 3 stored each candidate's rewards on the user's requests
            if any("user_rewards" not in p for p in pools):
                raise SystemExit(f"{src3}: pools without user_rewards (stage 3 ran with dpo.pairs: request)")
            per = [torch.tensor(p["user_rewards"]) for p in pools]
        r = rewards
        res = run_kind(ctx, kind, src3 / "reasoner", pairs_of(kind, pools, prompts, r, cfg.dpo.min_margin, per), seed)
        res["wall_seconds"] = time.perf_counter() - t0
        results["kinds"][kind] = res
        h = res.get("held_out", {})
        print(f"{kind}: {res['train_pairs']} train pairs, {res['held_pairs']} held out: "
              f"held-out loss {h.get('loss', math.nan):.3f} acc {h.get('reward_accuracy', math.nan):.3f} "
              f"(se {res.get('check', {}).get('standard_error') or math.nan:.3f}); train-pair acc "
              f"{res.get('train_sample', {}).get('reward_accuracy', math.nan):.3f}", flush=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
