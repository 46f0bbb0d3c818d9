"""What every training stage gets (`Context`) and the helpers stages share: model configs sized
from the data and the run's config, latent queries of whole splits, the run's current models."""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rgalign.artifacts.run import STAGE_NAMES, RunDir
from rgalign.config import to_dict
from rgalign.data.encoders import FeatureEncoders
from rgalign.data.loader import Dataset
from rgalign.data.requests import RequestArrays
from rgalign.errors import TrainError
from rgalign.io import atomic_dir, write_json_atomic
from rgalign.models.prompt import PromptFields
from rgalign.models.qe_ranker import QERankerConfig
from rgalign.models.reasoner import Reasoner, ReasonerConfig
from rgalign.progress import Log
from rgalign.training import loops
from rgalign.training.config import TrainConfig
from rgalign.training.distributed import DistInfo, barrier
from rgalign.training.evaluate import latent_queries, prompts_of, ranker_metrics



@dataclass
class Context:
    """What every stage gets: the data, the run folder, the config and the process group."""

    run: RunDir
    config: TrainConfig
    dataset: Dataset
    encoders: FeatureEncoders
    fields: PromptFields
    tokenizer: Any
    splits: dict[str, RequestArrays]
    dist: DistInfo
    log: Log
    quiet: bool
    # test-split latent queries by reasoner folder, computed ahead for the run's evaluation
    # (see `prefetch_test_latents`); a finished stage's reasoner never changes, so they stay valid
    test_latents: dict[Path, torch.Tensor] = field(default_factory=dict)
    prompt_budget: Any = None  # rgalign.training.prompt_budget.PromptBudget, set by `trainer.prepare`

    def prompts(self, split: str) -> list[str]:
        cache = self.__dict__.setdefault("_prompts", {})
        if split not in cache:
            cache[split] = prompts_of(self.splits[split], self.fields)
        return cache[split]

    def finish(self, index: int, save: Callable[[Path], None], info: dict[str, Any], round_: int = 0) -> None:
        """Rank 0 writes the stage folder (atomically); every rank waits for it."""
        if self.dist.is_main:
            with atomic_dir(self.run.stage_dir(index, round_)) as d:
                save(d)
                info = {"stage": index, "name": STAGE_NAMES[index], "round": round_, **info}
                write_json_atomic(d / "stage.json", info)
        barrier(self.dist)

    def relative(self, path: Path) -> str:
        """``path`` relative to the run folder, as stage.json records it."""
        return str(Path(path).relative_to(self.run.root))


def ranker_kwargs(ctx: Context) -> dict[str, Any]:
    """What the baseline and the QE ranker configs share: the feature layout from the encoders and
    the sizes of ``TrainConfig.ranker`` (same capacity, so the comparison isolates the query)."""
    return {
        "cardinalities": tuple(ctx.encoders.cardinalities), "n_numeric": len(ctx.encoders.numeric_fields),
        "n_intents": ctx.encoders.num_intents, **to_dict(ctx.config.ranker), "seed": ctx.config.seed,
    }


def reasoner_config(ctx: Context) -> ReasonerConfig:
    r = ctx.config.reasoner
    return ReasonerConfig(
        backbone=r.backbone, vocab_size=r.vocab_size, hidden=r.hidden, layers=r.layers, heads=r.heads,
        kv_heads=r.kv_heads, intermediate=r.intermediate, d_query=r.d_query,
        # the data's prompt budget (at most r.max_len), see rgalign.training.prompt_budget
        max_len=ctx.prompt_budget.max_len if ctx.prompt_budget is not None else r.max_len,
        seed=ctx.config.seed,
    )


def qe_config(ctx: Context, reasoner: Reasoner) -> QERankerConfig:
    return QERankerConfig(**ranker_kwargs(ctx), d_query=reasoner.config.d_query, text_dim=reasoner.hidden_size)


def compute_latents(
    ctx: Context, reasoner: Reasoner, splits: Iterable[str], train_rows: np.ndarray | None = None
) -> dict[str, torch.Tensor]:
    """Latent queries of each split's requests, once (the reasoner is frozen while they are used);
    for the training requests at ``train_rows`` only, when given."""
    splits = list(splits)
    prompts = {s: ctx.prompts(s) for s in splits}
    if train_rows is not None and "train" in prompts:
        prompts["train"] = [prompts["train"][i] for i in train_rows]
    out = {}
    with loops.progress(disable=ctx.quiet or not ctx.dist.is_main) as bar:
        task = bar.add_task("latent queries", total=sum(len(p) for p in prompts.values()), info="")
        for s in splits:
            # sharded data: this rank's own requests, encoded here (nothing to gather)
            dist = DistInfo() if ctx.dist.data_sharded else ctx.dist
            out[s] = latent_queries(reasoner, prompts[s], ctx.config.infer_batch, dist, bar, task)
    return out


LATENTS = "latents.safetensors"
TRAIN_ROWS = "train_rows"  # in LATENTS when the train latents are of a subset of the requests


def per_rank_data(ctx: Context) -> bool:
    """Whether the ranks hold different requests (the data sharded over several processes): a
    file of rank 0's per-request results (latents) would then be wrong for the others."""
    return ctx.dist.data_sharded and ctx.dist.enabled


def save_latents(stage_dir: Path, latents: dict[str, torch.Tensor], train_rows: np.ndarray | None = None) -> None:
    """The train/valid latent queries a ranker stage trained on (stage 6's control re-fit reuses
    them instead of running the reasoner over every request again), and which training requests
    they are of when not all."""
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in latents.items()}
    if train_rows is not None:
        tensors[TRAIN_ROWS] = torch.from_numpy(np.asarray(train_rows, dtype=np.int64))
    save_file(tensors, str(stage_dir / LATENTS))


def load_latents(
    ctx: Context, stage_dir: Path, reasoner_dir: Path, train_rows: np.ndarray | None = None
) -> dict[str, torch.Tensor]:
    """A ranker stage's saved train/valid latents (of the training requests at ``train_rows``
    when given), or, where the file lacks them, recomputed with its reasoner."""
    path = stage_dir / LATENTS
    if path.is_file() and not per_rank_data(ctx):
        from rgalign.models.checkpoint import load_weights

        out = load_weights(path)
        saved_rows = out.pop(TRAIN_ROWS, None)
        if "valid" in out and len(out["valid"]) == len(ctx.splits["valid"]) and "train" in out:
            if saved_rows is None and len(out["train"]) == len(ctx.splits["train"]):
                if train_rows is not None:
                    out["train"] = out["train"][torch.from_numpy(np.asarray(train_rows, dtype=np.int64))]
                return out
            if saved_rows is not None and train_rows is not None and np.array_equal(saved_rows.numpy(), train_rows):
                return out
    return compute_latents(ctx, Reasoner.load(reasoner_dir).eval(), ["train", "valid"], train_rows)


def test_latents(ctx: Context, reasoner_dir: Path, reasoner: Reasoner | None = None) -> torch.Tensor:
    """Latent queries of the test split with the reasoner saved at ``reasoner_dir`` (``reasoner``
    when it is loaded already), computed once."""
    key = reasoner_dir.resolve()
    if key not in ctx.test_latents:
        reasoner = reasoner if reasoner is not None else Reasoner.load(reasoner_dir).eval()
        ctx.test_latents[key] = latent_queries(reasoner, ctx.prompts("test"), ctx.config.infer_batch, DistInfo())
    return ctx.test_latents[key]


@contextlib.contextmanager
def prefetch_test_latents(ctx: Context, reasoner_dirs: Iterable[Path]) -> Iterator[None]:
    """Compute the test latents the run's evaluation will need, on the core a ranker leaves idle.

    Ranker training runs on one intra-op thread (`loops.train_ranker`); wrapped in this block, a
    background thread with one intra-op thread encodes the test prompts with each reasoner in
    ``reasoner_dirs`` meanwhile. Measured on 2 cores: a ranker epoch took 12% longer, the latents
    no longer than alone, and the evaluation at the end of `rgalign train` then skips them. The
    latents are the same, bit for bit, as with two threads. Only for a single process (under DDP
    every core has a rank), and only on the main rank; an error in the thread is raised at exit.

    The models are built here, in the caller's thread, with the global RNG saved and restored:
    building one draws from it (weight init before the weights are loaded), and from another
    thread those draws would land between the ranker's dropout draws. The thread itself only runs
    eval-mode forwards, which draw nothing, so the run's results do not change.
    """
    todo = [d for d in reasoner_dirs if d.resolve() not in ctx.test_latents]
    if ctx.dist.enabled or not todo:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        models = [(d, Reasoner.load(d).eval()) for d in todo]
    failure: list[BaseException] = []

    def work() -> None:
        torch.set_num_threads(1)
        try:
            for d, reasoner in models:
                test_latents(ctx, d, reasoner)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            failure.append(e)

    ctx.prompts("test")  # built here, not raced for by the two threads
    threads = torch.get_num_threads()
    thread = threading.Thread(target=work, name="rgalign-test-latents", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()
        torch.set_num_threads(threads)
    if failure:
        raise failure[0]


def require_reasoner(ctx: Context, stage: int) -> Path:
    """The reasoner the next stage starts from: that of the last finished stage that trained one."""
    from rgalign.artifacts.run import latest_reasoner_dir

    d = latest_reasoner_dir(ctx.run)
    if d is None:
        raise TrainError(f"{ctx.run.root}: stage {stage} needs the warm-up reasoner; run stage 1 first (--stages 0-{stage})")
    return d


def init_intent_prior(ctx: Context, model: torch.nn.Module, text_emb: np.ndarray | None = None) -> dict[str, Any]:
    """Tell a new ranker which intents the training split shows (the others score as cold, see
    `rgalign.models.layers.IntentIds`) and start its intent biases at item popularity: the
    logit of each intent's smoothed training like rate. With ``text_emb`` (N, H) (the QE ranker,
    which reads text), the smoothing shrinks toward what the intent's text predicts where the
    data says the text predicts it (`rgalign.training.intent_prior`). Returns what was chosen."""
    from rgalign.training.evaluate import popularity_scores
    from rgalign.training.intent_prior import text_smoothed_rate_from_counts
    from rgalign.training.shard_data import counts_sum

    tr = ctx.splits["train"]
    n = ctx.encoders.num_intents
    # sharded data: the whole log's counts (all-reduced), so every rank starts the same ranker
    shows = counts_sum(np.bincount(tr.shown[tr.mask], minlength=n).astype(np.int64), ctx.dist)
    info: dict[str, Any] = {"text": None}
    if text_emb is None:
        rates = popularity_scores(tr, n, ctx.dist)
    else:  # the whole log's counts: every rank fits the same regression
        clicks = counts_sum(np.bincount(tr.shown[tr.mask], weights=tr.labels[tr.mask].astype(np.float64),
                                        minlength=n), ctx.dist)
        rates, fit = text_smoothed_rate_from_counts(shows, clicks, text_emb, seed=ctx.config.seed)
        info.update(fit)
    rate = float(tr.labels[tr.mask].mean())
    if ctx.dist.data_sharded and ctx.dist.enabled:
        clicks, impressions = counts_sum(np.array([tr.labels[tr.mask].sum(), tr.mask.sum()], np.float64), ctx.dist)
        rate = float(clicks / impressions)
    model.intent_ids.set_known(torch.from_numpy((shows > 0).astype(np.float32)))
    model.intent_ids.init_bias(torch.from_numpy(rates), rate)
    model.intent_ids.freeze_bias()
    with torch.no_grad():
        model.gate.zero_()  # starts as item popularity exactly (see the models' `gate`)
    return info


def intent_text_embeddings(ctx: Context, reasoner: Reasoner) -> tuple[np.ndarray, str]:
    """(N, H) embeddings of the KB's intent texts for the QE ranker's prior, and their source:
    the pretrained sentence encoder all-MiniLM-L6-v2 where it is installed (it knows what words
    mean; the reasoner was trained from scratch on this log's few thousand prompts), else the
    reasoner's own pooled hidden states (`Reasoner.encode_texts`), saying why."""
    from rgalign.models.sentence_encoder import NAME, load_sentence_encoder

    texts = list(ctx.encoders.intent_texts)
    encoder, why = load_sentence_encoder()
    if encoder is not None:
        return encoder.encode(texts), NAME
    ctx.log(f"intent prior: no sentence encoder ({why}); the reasoner's text embeddings instead")
    return reasoner.encode_texts(texts).numpy(), f"reasoner ({why})"


def valid_metrics(ctx: Context, model: torch.nn.Module, query: torch.Tensor | None = None) -> dict[str, float]:
    """The valid split's metrics of a stage's ranker, for its stage.json: on rank 0, or, with the
    data sharded, on every rank together (merged: `evaluate.metrics_from_scores`)."""
    if ctx.dist.data_sharded:
        return ranker_metrics(model, ctx.splits["valid"], query, k=ctx.config.eval_k, dist=ctx.dist)
    return ranker_metrics(model, ctx.splits["valid"], query, k=ctx.config.eval_k) if ctx.dist.is_main else {}


def ranker_fit_info(res: Any) -> dict[str, Any]:
    """What stage.json records of a ranker's early-stopped training (`loops.RankerResult`)."""
    def finite(x: float) -> float | None:
        return None if math.isnan(x) else x

    return {"checks": res.checks, "steps": res.steps, "stopped_early": res.stopped_early,
            "best_valid_gauc": res.best_valid_gauc, "start_valid_gauc": finite(res.start_valid_gauc),
            "gain_over_start": finite(res.gain), "gain_se": finite(res.gain_se), "start_kept": res.start_kept}
