"""``rgalign train``: the stages of SPEC §3 over one run folder, resumable, seeded.

Each stage trains on every rank (DDP under torchrun), then rank 0 writes its folder atomically
(checkpoint + ``stage.json`` with metrics, losses and timing) before the next stage starts. A
finished stage is never re-run: an interrupted run resumes after the last finished one.

Stages here: 0 baseline (AutoInt+MoE), 1 warm-up SFT of the reasoner, 2 QE reward ranker on the
frozen reasoner's latent queries; 3-6, the Ranking-Guided Alignment loop, are in
:mod:`rgalign.training.alignment` (``rounds`` repeats them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rgalign.data.encoders import FeatureEncoders
from rgalign.data.loader import Dataset, load_dataset
from rgalign.data.requests import build_requests
from rgalign.errors import ConfigError, RgalignError, TrainError
from rgalign.io import read_json, write_json_atomic, write_text_atomic
from rgalign.metrics import abs_deltas, relative_deltas
from rgalign.models.baseline import AutoIntMoE, BaselineConfig
from rgalign.models.prompt import PromptFields, build_target
from rgalign.models.qe_ranker import QERanker
from rgalign.models.reasoner import Reasoner
from rgalign.models.tokenizer import load_tokenizer, train_tokenizer
from rgalign.progress import first_line
from rgalign.training import finetune, loops
from rgalign.training.alignment import RGA_STAGES
from rgalign.training.config import TrainConfig
from rgalign.training.distributed import DistInfo, all_gather_object, all_reduce_sum, barrier, init_distributed
from rgalign.training.global_sft import drop_stage_state, sft_for_stage
from rgalign.training.parallel import dist_record
from rgalign.training.evaluate import (
    baseline_forward, cohort_masks, popularity_metrics, qe_forward, ranker_metrics,
)
from rgalign.training.shard_data import (
    data_fingerprint, load_sharded, share, shard_record, shard_splits, use_sharded_data,
)
from rgalign.training.context import (
    Context, Log, compute_latents, init_intent_prior, intent_text_embeddings, ranker_fit_info, prefetch_test_latents, qe_config, ranker_kwargs, reasoner_config, require_reasoner,
    per_rank_data, save_latents, test_latents, valid_metrics,
)
from rgalign.training.prompt_budget import PromptBudget, make_budget
from rgalign.artifacts.run import STAGE_NAMES, RunDir, fingerprint_files


def parse_stages(spec: str) -> list[int]:
    """``"0-2"`` -> [0, 1, 2]; ``"0,2"`` -> [0, 2]. Stages must exist and be in order."""
    out: list[int] = []
    try:
        for part in spec.split(","):
            lo, _, hi = part.strip().partition("-")
            first, last = int(lo), int(hi or lo)
            if last < first:  # range() would be empty: a run that trains nothing and says nothing
                raise ConfigError(f"--stages {spec!r}: {first}-{last} runs backwards; write {last}-{first}")
            out.extend(range(first, last + 1))
    except ValueError:
        raise ConfigError(f"--stages {spec!r}: expected a range like 0-2 or a list like 0,1,2") from None
    bad = [s for s in out if s not in STAGE_NAMES]
    if bad:
        raise ConfigError(f"--stages {spec!r}: no stage {bad[0]}; stages are 0-6")
    return sorted(set(out))


# ---- stage 0: the AutoInt+MoE baseline --------------------------------------------------------


def _baseline_config(ctx: Context) -> BaselineConfig:
    return BaselineConfig(**ranker_kwargs(ctx))


def stage_baseline(ctx: Context) -> None:
    c = ctx.config.baseline
    model = AutoIntMoE(_baseline_config(ctx))
    init_intent_prior(ctx, model)
    res = loops.train_ranker(
        model, baseline_forward, ctx.splits["train"], ctx.splits["valid"], epochs=c.epochs,
        patience=c.patience, min_check_steps=c.min_check_steps, min_gain_se=c.min_gain_se, batch_size=c.batch_size, lr=c.lr, weight_decay=c.weight_decay, alpha_bce=c.alpha_bce,
        seed=ctx.config.seed, dist=ctx.dist, description="0 baseline", quiet=ctx.quiet,
    )
    valid = valid_metrics(ctx, model)

    def save(d: Path) -> None:
        model.save(d / "ranker")
        write_text_atomic(d / "losses.csv", res.log.to_csv())

    ctx.finish(0, save, {"seconds": res.seconds, "impressions_per_s": res.impressions_per_s,
                         "best_epoch": res.best_epoch, **ranker_fit_info(res), "valid": valid})
    ctx.log(f"stage 0 baseline: valid GAUC {valid.get('gauc', float('nan')):.4f}, {res.seconds:.0f} s, "
            f"{res.impressions_per_s:,.0f} impressions/s")


# ---- stage 1: reasoner warm-up SFT ------------------------------------------------------------


def warmup_examples(ctx: Context) -> tuple[list[str], list[str]]:
    """(prompt, text of the clicked intents) for training requests with a click, subsampled."""
    tr = ctx.splits["train"]
    clicked = tr.mask & (tr.labels > 0)
    rows = np.flatnonzero(clicked.any(axis=1))
    rng = np.random.default_rng(ctx.config.seed + 1)
    limit = share(ctx.config.warmup.max_examples, len(rows), ctx.dist)  # sharded: this rank's part
    if len(rows) > limit:
        rows = np.sort(rng.choice(rows, limit, replace=False))
    prompts = ctx.prompts("train")
    texts = ctx.encoders.intent_texts
    targets = [build_target([texts[i] for i in tr.shown[r][clicked[r]]]) for r in rows]
    return [prompts[r] for r in rows], targets


def stage_warmup(ctx: Context) -> None:
    c = ctx.config.warmup
    reasoner = Reasoner(reasoner_config(ctx), ctx.tokenizer)
    prompts, targets = warmup_examples(ctx)
    if not all_reduce_sum(float(len(prompts)), ctx.dist):  # sharded: a rank may have none, not all
        raise TrainError("stage 1: no training request has a click; the warm-up SFT needs clicked intents")
    state_dir = ctx.run.root / "train_state" / "1-warmup"  # under torchrun with --checkpoint-every
    tuning = finetune.start(reasoner, ctx.config)  # LoRA / checkpointing / bf16 as the config says
    res = sft_for_stage(ctx.dist, state_dir)(
        reasoner, ctx.tokenizer, prompts, targets, epochs=c.epochs, batch_size=c.batch_size, lr=c.lr,
        max_len=reasoner.config.max_len, seed=ctx.config.seed, dist=ctx.dist, description="1 warm-up SFT",
        quiet=ctx.quiet, autocast=tuning.autocast,
    )
    tuning.merge()  # a plain model on disk: what stage 2 and the export load

    def save(d: Path) -> None:
        reasoner.save(d / "reasoner")
        write_text_atomic(d / "losses.csv", res.log.to_csv())

    ctx.finish(1, save, {"dist": dist_record(ctx.dist, reasoner), "prompt_budget": ctx.prompt_budget.to_dict(), "seconds": res.seconds, "examples": len(prompts), "examples_per_s": res.examples_per_s,
                         "tokens_per_s": res.tokens_per_s, "final_lm_loss": res.final_loss, "finetune": tuning.info()})
    drop_stage_state(ctx.dist, state_dir)
    ctx.log(f"stage 1 warm-up: {len(prompts)} examples, final LM loss {res.final_loss:.3f}, {res.seconds:.0f} s, "
            f"{res.examples_per_s:.1f} examples/s{finetune.summary(tuning)}")


# ---- stage 2: QE reward ranker on the frozen reasoner -----------------------------------------


def stage_reward(ctx: Context) -> None:
    c = ctx.config.reward
    reasoner_dir = require_reasoner(ctx, 2)
    reasoner = Reasoner.load(reasoner_dir).eval()
    for p in reasoner.parameters():  # frozen: stage 2 trains the ranker only
        p.requires_grad_(False)
    t0 = time.perf_counter()
    q = compute_latents(ctx, reasoner, ["train", "valid"])
    latent_seconds = time.perf_counter() - t0
    model = QERanker(qe_config(ctx, reasoner))
    model.set_intent_text_emb(reasoner.encode_texts(ctx.encoders.intent_texts))
    model.set_intent_latents(reasoner.encode_prompts(list(ctx.encoders.intent_texts), batch_size=ctx.config.infer_batch))
    if ctx.config.intent_prior == "text":
        text_emb, text_source = intent_text_embeddings(ctx, reasoner)
        prior = {**init_intent_prior(ctx, model, text_emb), "text": text_source}
    else:
        prior = init_intent_prior(ctx, model)
    with prefetch_test_latents(ctx, [reasoner_dir]):
        res = loops.train_ranker(
            model, qe_forward, ctx.splits["train"], ctx.splits["valid"], epochs=c.epochs, batch_size=c.batch_size,
            patience=c.patience, min_check_steps=c.min_check_steps, min_gain_se=c.min_gain_se,
            lr=c.lr, weight_decay=c.weight_decay, alpha_bce=c.alpha_bce, seed=ctx.config.seed, dist=ctx.dist,
            train_query=q["train"], valid_query=q["valid"], description="2 QE reward ranker", quiet=ctx.quiet,
        )
    valid = valid_metrics(ctx, model, q["valid"])

    def save(d: Path) -> None:
        model.save(d / "ranker")
        if not per_rank_data(ctx):  # sharded over ranks: rank 0's latents only, of no use to a resume
            save_latents(d, q)
        write_text_atomic(d / "losses.csv", res.log.to_csv())

    ctx.finish(2, save, {
        "prompt_budget": ctx.prompt_budget.to_dict(), "seconds": res.seconds + latent_seconds, "ranker_seconds": res.seconds, "latent_seconds": latent_seconds,
        "impressions_per_s": res.impressions_per_s, "best_epoch": res.best_epoch, **ranker_fit_info(res),
        "valid": valid, "reasoner": str(reasoner_dir.relative_to(ctx.run.root)), "intent_prior": prior,
    })
    ctx.log(f"stage 2 reward: valid GAUC {valid.get('gauc', float('nan')):.4f}, latents {latent_seconds:.0f} s, "
            f"ranker {res.seconds:.0f} s, {res.impressions_per_s:,.0f} impressions/s")


STAGES: dict[int, Callable[[Context], None]] = {0: stage_baseline, 1: stage_warmup, 2: stage_reward}
# stages 3-6 take (ctx, round): rgalign.training.alignment


# ---- the run ----------------------------------------------------------------------------------


def _data_fingerprint(dataset: Dataset) -> str:
    files = [Path(dataset.root) / name for name in dataset.sources.values()]
    return fingerprint_files([f for f in files if f.is_file()] + [Path(dataset.root) / "dataset.yaml"])


def prepare(data: str | Path, out: str | Path, config: TrainConfig, dist: DistInfo, log: Log, quiet: bool) -> Context:
    """Load and validate the data (before any training), and create or re-open the run folder.
    With ``dist.data_sharded``, this rank's shard of it (`rgalign.training.shard_data`)."""
    fitted = None
    if dist.data_sharded:
        dataset, fitted = load_sharded(data, dist)
        fp = data_fingerprint(data)
    else:
        dataset = load_dataset(data)
        fp = _data_fingerprint(dataset)
    run = RunDir(Path(out))
    if run.run_json.exists():
        prev = read_json(run.run_json)
        if prev["data"]["sha256"] != fp:
            raise ConfigError(f"{run.root} was trained on other data ({prev['data']['path']}); use a new --out")
        # the saved config read back through TrainConfig: keys added since it was written take
        # their defaults, so a run started before them resumes (a changed value still refuses)
        if TrainConfig.from_dict(prev["config"]).to_dict() != config.to_dict():
            raise ConfigError(f"{run.root} was started with another config; resume with the same one or use a new --out")
        if prev["seed"] != config.seed:
            raise ConfigError(f"{run.root} was started with seed {prev['seed']}; use a new --out for seed {config.seed}")
    elif dist.is_main:
        try:
            run.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrainError(f"cannot create the run folder {run.root}: {e.strerror or e}") from None
        run.write_run_json(seed=config.seed, config=config.to_dict(), data_root=dataset.root, data_fingerprint=fp)
    fields = PromptFields.from_schema(dataset.schema)
    if run.encoders_json.exists():
        encoders = FeatureEncoders.from_json(run.encoders_json)
    else:
        encoders = fitted or FeatureEncoders.fit(dataset)
        if dist.is_main:
            encoders.to_json(run.encoders_json)
    if dist.data_sharded:
        splits = shard_splits(dataset, encoders, dist)
    else:
        splits = {s: build_requests(dataset, encoders, s) for s in ("train", "valid", "test")}
    ctx = Context(run, config, dataset, encoders, fields, None, splits, dist, log, quiet)
    ctx.tokenizer = _tokenizer(ctx)
    _prompt_budget(ctx)
    barrier(dist)
    return ctx


def _prompt_budget(ctx: Context) -> None:
    """Fit the prompt budget (`rgalign.training.prompt_budget`) on the training prompts, once per
    run (``RUN/prompt_budget.json``; ``RUN/prompt_fields.json`` carries the text caps, for
    serving); from then on ``ctx.prompts`` are the budgeted prompts."""
    path = ctx.run.root / "prompt_budget.json"
    fields_path = ctx.run.root / "prompt_fields.json"
    if path.is_file() and fields_path.is_file():
        budget = PromptBudget.from_dict(read_json(path))
        fields = PromptFields.from_dict(read_json(fields_path))
    else:
        raw = {s: ctx.splits[s].raw for s in ("train", "valid", "test")}
        gather = (lambda obj: all_gather_object(obj, ctx.dist)) if ctx.dist.data_sharded else (lambda obj: [obj])
        budget, fields = make_budget(ctx.tokenizer, raw, ctx.fields, ctx.config.reasoner.max_len, gather)
        if ctx.dist.is_main:
            write_json_atomic(fields_path, fields.to_dict())
            write_json_atomic(path, budget.to_dict())
    ctx.fields, ctx.prompt_budget = fields, budget
    ctx.__dict__.pop("_prompts", None)  # prompts built before the budget (the tokenizer's corpus)
    if ctx.tokenizer.model_max_length != budget.max_len:
        ctx.tokenizer.model_max_length = budget.max_len
        if ctx.dist.is_main:
            ctx.tokenizer.save_pretrained(str(ctx.run.tokenizer_dir))
    if budget.text_max_chars:
        ctx.log(f"prompt budget {budget.max_len} tokens (training prompts: p99 {budget.raw_length_percentiles.get('p99', 0):.0f}, "
                f"max {budget.raw_length_percentiles.get('max', 0):.0f}); free text capped at "
                + ", ".join(f"{n} {c} chars" for n, c in budget.text_max_chars.items())
                + f", oldest part first: {budget.cut.get('train', 0):,} of {budget.prompts.get('train', 0):,} training prompts cut")


def _tokenizer(ctx: Context):
    """The run's tokenizer: the backbone's own when one is given, else trained offline on training
    prompts and the KB texts (deterministic, so every rank trains the same one). With the data
    sharded, rank 0 trains it on its own training prompts and the others load it."""
    backbone = ctx.config.reasoner.backbone
    sharded = ctx.dist.data_sharded and ctx.dist.enabled
    # rank 0's view, for every rank: a rank that looked after rank 0 wrote it would skip the barrier
    exists = all_gather_object(ctx.run.tokenizer_dir.is_dir(), ctx.dist)[0] if sharded else ctx.run.tokenizer_dir.is_dir()
    if exists:
        return load_tokenizer(ctx.run.tokenizer_dir)
    if sharded and backbone is None and not ctx.dist.is_main:
        barrier(ctx.dist)  # rank 0 trains and saves it
        return load_tokenizer(ctx.run.tokenizer_dir)
    if backbone is not None and Path(backbone).is_dir():
        tok = load_tokenizer(backbone, padding_side="left")
    elif backbone is not None:
        raise ConfigError(f"--backbone {backbone!r}: not a local folder, and this machine has no model hub; "
                          "pass a folder holding a Hugging Face causal LM and its tokenizer")
    else:
        prompts = ctx.prompts("train")
        rng = np.random.default_rng(ctx.config.seed)
        n = min(len(prompts), ctx.config.reasoner.tokenizer_corpus)
        corpus = [prompts[i] for i in rng.choice(len(prompts), n, replace=False)] + list(ctx.encoders.intent_texts)
        tok = train_tokenizer(corpus, vocab_size=ctx.config.reasoner.vocab_size,
                              model_max_length=ctx.config.reasoner.max_len)
    if ctx.dist.is_main:
        tok.save_pretrained(str(ctx.run.tokenizer_dir))
    if sharded and backbone is None:
        barrier(ctx.dist)
    return tok


def train(
    data: str | Path,
    out: str | Path,
    config: TrainConfig | None = None,
    stages: list[int] | None = None,
    *,
    rounds: int = 1,
    log: Log = print,
    quiet: bool = False,
    dist_strategy: str = "auto",
    checkpoint_every: int = 0,
    shard_data: str = "auto",
) -> dict[str, Any]:
    """Run ``stages`` (default: all, 0-6) of SPEC §3 into ``out``; stages 3-6 run ``rounds`` times
    (the closed loop). Returns metrics.json. Under torchrun, ``dist_strategy`` (auto / ddp / fsdp)
    says how the reasoner's training (stages 1, 3, 4, 5: `rgalign.training.global_loop`) spreads
    over the processes (`rgalign.training.parallel`), and ``checkpoint_every`` > 0 makes those
    stages write a state they resume from after an interruption, on any number of processes
    (`rgalign.training.train_state`; with the data sharded, on the same number). ``shard_data``
    (auto / on / off): each process reads only its shard of the log (`rgalign.training.shard_data`;
    auto: from `rgalign.data.shards.STREAM_ROWS` impressions)."""
    config = config or TrainConfig()
    stages = stages if stages is not None else sorted(STAGE_NAMES)
    if rounds < 1:
        raise ConfigError(f"--rounds {rounds}: need at least 1 round of stages 3-6")
    sharded = use_sharded_data(shard_data, data)
    dist = replace(init_distributed(dist_strategy, checkpoint_every), data_sharded=sharded)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    ctx = prepare(data, out, config, dist, log if dist.is_main else (lambda _m: None), quiet)
    plan = [(i, 0) for i in stages if i in STAGES] + [(i, r) for r in range(rounds) for i in stages if i in RGA_STAGES]
    for index, round_ in plan:
        label = f"stage {index} {STAGE_NAMES[index]}" + (f" (round {round_})" if round_ else "")
        if ctx.run.finished(index, round_):
            ctx.log(f"{label}: finished earlier, skipped")
            continue
        torch.manual_seed(config.seed * 1000 + 100 * round_ + index)
        try:
            if index in STAGES:
                STAGES[index](ctx)
            else:
                RGA_STAGES[index](ctx, round_)
        except RgalignError:
            raise
        except Exception as e:  # noqa: BLE001 - torch / peft / numpy inside a stage: one line naming it
            raise TrainError(
                f"{label} failed: {type(e).__name__}: {first_line(e)[:400]} (finished stages are kept: rerun the "
                "same command to resume; --verbose shows the traceback)"
            ) from e
    result: dict[str, Any] = {}
    if dist.is_main or dist.data_sharded:  # sharded: every rank scores its test requests
        result = evaluate_run(ctx)
    barrier(dist)
    return result if dist.is_main else {}


def _finished_stages(run: RunDir) -> list[tuple[int, int]]:
    """(index, round) of every finished stage, in training order."""
    out = []
    for d in (run.root / "stages").glob("*/stage.json"):
        info = read_json(d)
        out.append((int(info.get("round", 0)), int(info["stage"])))
    return [(i, r) for r, i in sorted(out)]


def stage_label(index: int, round_: int) -> str:
    """``3-rg-sft``, ``3-rg-sft-r1``: the stage folder's name, the key of metrics.json's per_stage."""
    return f"{index}-{STAGE_NAMES[index]}" + (f"-r{round_}" if round_ else "")


def _stage_models(run: RunDir, index: int, round_: int) -> tuple[Path, Path] | None:
    """(reasoner, QE ranker) that represent a finished stage in the ablation: the stage's own pair
    for 2 and 6; for 3-5 the stage's reasoner read by that round's reward model (what the reward
    model makes of the partly aligned reasoner)."""
    d = run.stage_dir(index, round_)
    if index in (2, 6):
        return run.root / run.stage_info(index, round_)["reasoner"], d / "ranker"
    if index in (3, 4, 5) and run.finished(3, round_):
        return d / "reasoner", run.root / run.stage_info(3, round_)["reward_model"]
    return None


def evaluate_run(ctx: Context) -> dict[str, Any]:
    """Test metrics of every finished model of the run -> ``RUN/metrics.json`` (the ablation):
    ``test`` holds baseline, qe (stage 2), qe_rga (the last calibrate stage) and qe_refit (that
    stage's control: the same ranker re-fit on the unaligned latents); ``popularity`` the item
    popularity reference on the same split; ``per_stage`` every finished stage, in training order.
    Every row carries GAUC per cohort (seen/cold intents and users, see `cohort_masks`)."""
    k = ctx.config.eval_k
    test = ctx.splits["test"]
    dist = ctx.dist if ctx.dist.data_sharded else DistInfo()  # sharded: collective, on every rank
    cohorts = cohort_masks(test, ctx.splits["train"], dist)

    def qe_metrics(reasoner_dir: Path, ranker_dir: Path) -> dict[str, float]:
        return ranker_metrics(QERanker.load(ranker_dir), test, test_latents(ctx, reasoner_dir), k=k, cohorts=cohorts,
                              dist=dist)

    per_stage: dict[str, dict[str, float]] = {}
    for index, round_ in _finished_stages(ctx.run):
        if index == 0:
            per_stage[stage_label(0, 0)] = ranker_metrics(AutoIntMoE.load(ctx.run.stage_dir(0) / "ranker"), test, k=k,
                                                          cohorts=cohorts, dist=dist)
        elif (pair := _stage_models(ctx.run, index, round_)) is not None:
            per_stage[stage_label(index, round_)] = qe_metrics(*pair)
    per_model: dict[str, dict[str, float]] = {}
    if "0-baseline" in per_stage:
        per_model["baseline"] = per_stage["0-baseline"]
    if "2-reward" in per_stage:
        per_model["qe"] = per_stage["2-reward"]
    calibrated = [(i, r) for i, r in _finished_stages(ctx.run) if i == 6]
    if calibrated:
        per_model["qe_rga"] = per_stage[stage_label(*calibrated[-1])]
        control = ctx.run.stage_info(*calibrated[-1]).get("control")
        if control:  # the same re-fit without alignment: isolates what RGA adds
            per_model["qe_refit"] = qe_metrics(ctx.run.root / control["reasoner"],
                                               ctx.run.stage_dir(*calibrated[-1]) / "control_ranker")
    out: dict[str, Any] = {"test": per_model, "k": k}
    if "baseline" in per_model:
        base = per_model["baseline"]
        out["relative_to_baseline"] = {m: relative_deltas(v, base) for m, v in per_model.items() if m != "baseline"}
        out["absolute_to_baseline"] = {m: abs_deltas(v, base) for m, v in per_model.items() if m != "baseline"}
    # the reference every recommender reports: rank by the intents' smoothed training like rate
    out["popularity"] = popularity_metrics(ctx.splits["train"], test, ctx.encoders.num_intents, k=k, cohorts=cohorts,
                                           dist=dist)
    out["per_stage"] = per_stage
    out["data"] = shard_record(ctx.splits, dist)
    out["stages"] = {
        stage_label(i, r): {k2: v for k2, v in ctx.run.stage_info(i, r).items() if k2 not in ("stage", "name")}
        for i, r in _finished_stages(ctx.run)
    }
    if ctx.dist.is_main:
        write_json_atomic(ctx.run.metrics_json, out)
    return out


def evaluate(run_dir: str | Path, data: str | Path, *, log: Log = print) -> dict[str, Any]:
    """``rgalign eval RUN DATA``: recompute metrics.json from the run's checkpoints."""
    run = RunDir(Path(run_dir))
    if not run.run_json.is_file():
        raise TrainError(f"{run.root}: not a run folder (no run.json); train one with `rgalign train DATA --out {run.root}`")
    config = TrainConfig.from_dict(read_json(run.run_json)["config"])
    ctx = prepare(data, run.root, config, DistInfo(), log, quiet=True)
    return evaluate_run(ctx)
