"""What every training stage gets (`Context`) and the helpers stages share: model configs sized
from the data and the run's config, latent queries of whole splits, the run's current models."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rgalign.config import to_dict
from rgalign.data.encoders import FeatureEncoders
from rgalign.data.loader import Dataset
from rgalign.data.requests import RequestArrays
from rgalign.errors import TrainError
from rgalign.io import atomic_dir, write_json_atomic
from rgalign.models.prompt import PromptFields
from rgalign.models.qe_ranker import QERankerConfig
from rgalign.models.reasoner import Reasoner, ReasonerConfig
from rgalign.training import loops
from rgalign.training.config import TrainConfig
from rgalign.training.distributed import DistInfo, barrier
from rgalign.training.evaluate import latent_queries, prompts_of
from rgalign.training.run import STAGE_NAMES, RunDir

Log = Callable[[str], None]


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
        kv_heads=r.kv_heads, intermediate=r.intermediate, max_len=r.max_len, d_query=r.d_query,
        seed=ctx.config.seed,
    )


def qe_config(ctx: Context, reasoner: Reasoner) -> QERankerConfig:
    return QERankerConfig(**ranker_kwargs(ctx), d_query=reasoner.config.d_query, text_dim=reasoner.hidden_size)


def compute_latents(ctx: Context, reasoner: Reasoner, splits: Iterable[str]) -> dict[str, torch.Tensor]:
    """Latent queries of each split's requests, once (the reasoner is frozen while they are used)."""
    splits = list(splits)
    out = {}
    total = sum(len(ctx.splits[s]) for s in splits)
    with loops.progress(disable=ctx.quiet or not ctx.dist.is_main) as bar:
        task = bar.add_task("latent queries", total=total, info="")
        for s in splits:
            out[s] = latent_queries(reasoner, ctx.prompts(s), ctx.config.infer_batch, ctx.dist, bar, task)
    return out


LATENTS = "latents.safetensors"


def save_latents(stage_dir: Path, latents: dict[str, torch.Tensor]) -> None:
    """The train/valid latent queries a ranker stage trained on (stage 6's control re-fit reuses
    them instead of running the reasoner over every request again)."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in latents.items()}, str(stage_dir / LATENTS))


def load_latents(ctx: Context, stage_dir: Path, reasoner_dir: Path) -> dict[str, torch.Tensor]:
    """A ranker stage's saved latents, or (older runs) recomputed with its reasoner."""
    path = stage_dir / LATENTS
    if path.is_file():
        from safetensors.torch import load_file

        out = load_file(str(path))
        if all(s in out and len(out[s]) == len(ctx.splits[s]) for s in ("train", "valid")):
            return out
    return compute_latents(ctx, Reasoner.load(reasoner_dir).eval(), ["train", "valid"])


def require_reasoner(ctx: Context, stage: int) -> Path:
    """The reasoner the next stage starts from: that of the last finished stage that trained one."""
    from rgalign.training.run import latest_reasoner_dir

    d = latest_reasoner_dir(ctx.run)
    if d is None:
        raise TrainError(f"{ctx.run.root}: stage {stage} needs the warm-up reasoner; run stage 1 first (--stages 0-{stage})")
    return d
