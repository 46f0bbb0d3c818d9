"""Stage 6, calibrate: the QE ranker re-fitted (warm start, KL to the previous ranker) on the aligned
reasoner's latent queries, and the same re-fit on the previous reasoner's as a control."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rgalign.errors import TrainError
from rgalign.io import read_json, write_text_atomic
from rgalign.models.qe_ranker import QERanker
from rgalign.models.reasoner import Reasoner
from rgalign.training import loops, rga
from rgalign.training.context import (
    Context, ranker_fit_info, compute_latents, load_latents, per_rank_data, prefetch_test_latents, save_latents,
    valid_metrics,
)
from rgalign.artifacts.run import latest_qe_ranker_dir
from rgalign.training.evaluate import qe_forward
from rgalign.training.shard_data import share
from rgalign.training.alignment.common import previous_stage, stage_seed


def _calibration_rows(ctx: Context) -> np.ndarray | None:
    """The training requests stage 6 re-fits on (sorted positions), or None for all of them. Drawn
    with the run's seed alone, so every round (and its control) re-fits on the same requests."""
    n, k = len(ctx.splits["train"]), ctx.config.calibrate.max_requests
    if k is not None:
        k = share(k, n, ctx.dist)  # sharded: this rank's part
    if k is None or k >= n:
        return None
    return np.sort(np.random.default_rng([ctx.config.seed, 6]).choice(n, k, replace=False))


def stage_calibrate(ctx: Context, round_: int) -> None:
    c = ctx.config.calibrate
    reasoner_dir = previous_stage(ctx, 5, round_) / "reasoner"
    prev_dir = latest_qe_ranker_dir(ctx.run)
    if prev_dir is None:
        raise TrainError(f"{ctx.run.root}: stage 6 needs a QE ranker to start from; run stage 2 first")
    prev_reasoner_dir = ctx.run.root / read_json(prev_dir.parent / "stage.json")["reasoner"]
    frozen = rga.FrozenModels(reasoner=Reasoner.load(reasoner_dir), previous_ranker=QERanker.load(prev_dir))
    reasoner, previous = frozen.models["reasoner"], frozen.models["previous_ranker"]
    seed = stage_seed(ctx, 6, round_)
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
            patience=c.patience, min_check_steps=c.min_check_steps, min_gain_se=c.min_gain_se,
            lr=c.lr, weight_decay=c.weight_decay, alpha_bce=c.alpha_bce, seed=seed, dist=ctx.dist,
            train_query=query["train"], valid_query=query["valid"], previous=previous, beta_kl=c.beta_kl,
            description=label, quiet=ctx.quiet,
        )
        return model, res

    # the re-fits use one core; the other meanwhile encodes the test split with this round's
    # reasoners (stages 5, 4, 3), for the evaluation at the end of the run
    this_round = [reasoner_dir] + [previous_stage(ctx, i, round_) / "reasoner" for i in (4, 3)]
    with prefetch_test_latents(ctx, this_round):
        kb = list(ctx.encoders.intent_texts)
        model, res = refit(q, reasoner.encode_texts(kb), f"6 calibrate (round {round_})",
                           reasoner.encode_prompts(kb, batch_size=ctx.config.infer_batch))
        valid = valid_metrics(ctx, model, q["valid"])
        control = control_res = None
        control_valid: dict[str, float] = {}
        if c.control:
            # the same re-fit on the previous reasoner's latents: what the extra ranker training alone buys
            q_prev = load_latents(ctx, prev_dir.parent, prev_reasoner_dir, rows)
            control, control_res = refit(q_prev, previous.intent_text_emb.clone(), f"6 control re-fit (round {round_})",
                                         previous.intent_latent.clone())
            control_valid = valid_metrics(ctx, control, q_prev["valid"])
    checks = frozen.check("stage 6")

    def save(d: Path) -> None:
        model.save(d / "ranker")
        if not per_rank_data(ctx):  # sharded over ranks: rank 0's latents only, of no use to the others
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
