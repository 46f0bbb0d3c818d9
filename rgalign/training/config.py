"""What a training run is: one frozen dataclass per stage, gathered in :class:`TrainConfig`.

Defaults are sized for the default synthetic dataset (20k requests, 200 intents) on a 2-core CPU. A YAML/JSON file given to ``rgalign train --config`` overrides any
subset of keys (unknown keys are an error).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from rgalign.config import from_dict, to_dict
from rgalign.models.ranker import RankerConfig


def _positive(obj: Any, *names: str) -> None:
    """A count or rate that must be > 0: 0 batches, epochs or rate would fail deep inside torch
    (a division by zero, "Invalid learning rate") instead of here, naming the key."""
    for name in names:
        value = getattr(obj, name)
        if not value > 0:
            raise ValueError(f"{name}={value!r}: must be > 0")


@dataclass(frozen=True)
class RankerStageConfig:
    """Training of a ranker (stage 0 baseline, stage 2 reward model, stage 6 calibration)."""

    # the most it may train: early stopping on the valid GAUC (loops.EarlyStopping) ends it sooner,
    # after `patience` checks without a better one, and restores the best check's weights
    epochs: int = 40
    patience: int = 4  # backtracks to the best weights at 1/2, 1/4, 1/8 of the rate, then stops
    min_check_steps: int = 25  # a check every epoch, or every this many steps if an epoch is shorter
    batch_size: int = 256  # requests per step (~2.5k impressions): stable ListNet gradients
    lr: float = 2e-3
    weight_decay: float = 1e-5
    alpha_bce: float = 0.5  # pointwise BCE weight, for calibrated probabilities (logloss)
    # the trained weights replace the starting ones (the intent prior) only when their valid GAUC
    # gain exceeds this many standard errors of that gain (loops.EarlyStopping); 0: any gain
    min_gain_se: float = 1.0

    def __post_init__(self) -> None:
        _positive(self, "epochs", "patience", "min_check_steps", "batch_size", "lr")
        if not self.min_gain_se >= 0:
            raise ValueError(f"min_gain_se={self.min_gain_se!r}: must be >= 0 (0 keeps any gain)")


@dataclass(frozen=True)
class CalibrateConfig(RankerStageConfig):
    """Stage 6: the QE ranker re-fitted from a warm start on the aligned reasoner's latents."""

    epochs: int = 20  # a warm start: early stopping ends it after a few epochs
    patience: int = 3  # one or two backtracks at a lower rate, then stop
    lr: float = 1e-3
    beta_kl: float = 0.1  # KL to the previous ranker, for stability
    control: bool = True  # also re-fit on the unaligned latents (the ablation's control)
    # re-fit on this many training requests (a seeded sample, the same in every round); None: all.
    # For large datasets, where the aligned reasoner's pass over every request is the cost. On the
    # default synthetic data 7,000 of 14,000 saved 40 s but cost 0.011 test GAUC (seed 0): all it is.
    max_requests: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_requests is not None and self.max_requests < 1:
            raise ValueError(f"max_requests={self.max_requests}: give at least 1, or null for every training request")


@dataclass(frozen=True)
class WarmupConfig:
    """Stage 1: cold-start SFT of the reasoner, prompt -> text of the clicked intent."""

    max_examples: int = 4000  # ~80 examples/s on 2 cores: ~50 s for one pass
    epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-3  # a from-scratch 4-layer model tolerates a high rate; linear decay to 0

    def __post_init__(self) -> None:
        _positive(self, "max_examples", "epochs", "batch_size", "lr")


@dataclass(frozen=True)
class RGSFTConfig:
    """Stage 3: Best-of-N candidate queries scored by the reward model, SFT on the best."""

    max_requests: int = 500  # training requests with a click per round (sampling and scoring are the cost)
    n_candidates: int = 8  # the N of Best-of-N
    n_sampled: int = 4  # of which sampled from the reasoner; the rest are KB texts by prior score
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 16  # an intent-like query is 5-12 tokens in this vocabulary
    reward: str = "listnet"  # or "ndcg" (see rgalign.training.rga.reward_scores)
    epochs: int = 1
    batch_size: int = 32
    lr: float = 3e-4  # a fine-tune of the warmed-up reasoner: a third of the warm-up's rate

    def __post_init__(self) -> None:
        _positive(self, "max_requests", "n_candidates", "max_new_tokens", "epochs", "batch_size", "lr", "temperature")


DPO_PAIRS = ("user", "request")


@dataclass(frozen=True)
class DPOConfig:
    """Stage 4: DPO on (best, worst) pairs of stage 3's pools, reference = the RG-SFT model."""

    beta: float = 0.1
    min_margin: float = 0.05  # reward (ListNet log-likelihood) margin below which a pair is noise
    # how a pool's (best, worst) is judged: "user", by each candidate's reward over up to
    # `user_requests` clicked training requests of the same user, kept where the preference holds
    # across them (`rga.user_dpo_pairs`); "request", by the reward on the pool's own slate
    # (`rga.dpo_pairs`). Measured on the default synthetic seeds 0-2, held-out reward accuracy
    # "request" 0.75 / 0.48 / 0.48, "user" 0.86 / 0.64 / 0.73 (benchmarks/dpo_pairs.py): one
    # slate's preference is memorised, a user's generalises
    pairs: str = "user"
    user_requests: int = 8
    max_pairs: int = 500
    held_out_fraction: float = 0.1  # pairs kept out of training: DPO's own generalisation check
    # 31 steps at 5e-5 left the loss at 0.692 (ln 2 = 0.693) and the reward accuracy at 0.50-0.55:
    # the policy did not move. A from-scratch 4-layer model fine-tunes at the RG-SFT's rate, and
    # two passes let the margins open.
    epochs: int = 2
    batch_size: int = 16  # pairs per step (32 sequences through the policy)
    lr: float = 3e-4
    # keep the trained policy only when its held-out reward accuracy beats chance (0.5) by more than
    # the binomial standard error over the held-out pairs (`rga.generalises`); otherwise stage 4
    # passes its input, the RG-SFT reasoner, on to stage 5 (stage.json: dpo_kept false, the figures).
    # Default synthetic seeds 1-2 measured 0.50 / 0.48 held out vs 0.78 on the training pairs: a
    # policy that memorised its pairs. Off by default, measured: dropping those policies cost
    # QE+RGA test GAUC (synthetic seed 2: 0.6868 -> 0.6808; the quickstart, whose 6 held-out
    # pairs cannot show anything: 0.6043 -> 0.6009), so a policy that fails to generalise on its
    # pairs still helps stage 5 there. stage.json records the check (``generalisation``) either way.
    require_generalisation: bool = False

    def __post_init__(self) -> None:
        _positive(self, "beta", "max_pairs", "epochs", "batch_size", "lr", "user_requests")
        if self.pairs not in DPO_PAIRS:
            raise ValueError(f"pairs {self.pairs!r}: choose one of {', '.join(DPO_PAIRS)}")


@dataclass(frozen=True)
class RGCLConfig:
    """Stage 5: InfoNCE between the prompt's latent query and the preferred query / clicked
    intents, with in-batch and KB negatives."""

    max_requests: int = 2000
    epochs: int = 1
    batch_size: int = 64
    lr: float = 2e-4
    temperature: float = 0.1
    preferred_weight: float = 0.5  # share of the preferred query in the positive (rest: clicked intents)
    kb_negatives: bool = True

    def __post_init__(self) -> None:
        _positive(self, "max_requests", "epochs", "batch_size", "lr", "temperature")


@dataclass(frozen=True)
class ModelSizes:
    """Ranker architecture knobs shared by the baseline and the QE ranker (same capacity, so the
    comparison isolates what the latent query adds). The defaults are `RankerConfig`'s, where
    each is explained: the one place they are written."""

    field_dim: int = RankerConfig.field_dim
    attn_layers: int = RankerConfig.attn_layers
    attn_heads: int = RankerConfig.attn_heads
    dim: int = RankerConfig.dim
    n_experts: int = RankerConfig.n_experts
    expert_hidden: int = RankerConfig.expert_hidden
    dropout: float = RankerConfig.dropout


@dataclass(frozen=True)
class ReasonerSizes:
    """The default reasoner backbone (a Qwen3-architecture model built from a config)."""

    backbone: str | None = None  # a local HF causal-LM folder or hub name overrides the default
    vocab_size: int = 2048
    hidden: int = 256
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 512
    # the cap of the prompt budget: the budget itself is the 99th percentile of the training
    # prompts' token lengths (rgalign.training.prompt_budget); free text is cut to fit it
    max_len: int = 256
    d_query: int = 64
    tokenizer_corpus: int = 5000  # training prompts the tokenizer is trained on (plus KB texts)


SWITCHES = ("auto", "on", "off")


@dataclass(frozen=True)
class FinetuneConfig:
    """How the reasoner's weights train in stages 1, 3, 4 and 5 (`rgalign.training.finetune`).

    Each switch is ``auto``, ``on`` or ``off``. ``auto`` chooses by the backbone: a loaded one
    (``--backbone``, an LLM) gets LoRA and gradient checkpointing; the default built-in backbone
    (a few million parameters, trained from scratch) is fully fine-tuned, as it always was: LoRA
    cannot teach a randomly initialised model a language, and checkpointing only costs it time.
    """

    # LoRA adapters (peft) on the backbone's linear layers, merged into the weights at the end of
    # each stage, so every checkpoint on disk (and the export) is a plain model of the same shape
    lora: str = "auto"
    lora_rank: int = 16  # ~10M trainable parameters of 0.6B at Qwen3-0.6B's shape (all linear layers)
    lora_alpha: float = 32.0  # scale alpha / rank = 2, peft's and the LoRA papers' usual ratio
    lora_dropout: float = 0.05
    # peft's "all-linear": every linear layer of the blocks, not the LM head, whatever the
    # architecture calls them (Qwen3: q/k/v/o_proj, gate/up/down_proj); or a list of module names
    lora_targets: tuple[str, ...] = ("all-linear",)
    # recompute each block's activations in the backward pass: activations no longer grow with
    # the number of layers, for ~30% more compute
    gradient_checkpointing: str = "auto"
    # bf16 autocast of the forward passes; auto: only on a CUDA device with bf16 (on CPU,
    # bf16 matmuls are slower than fp32 on AVX2 and change the numbers: on only when asked)
    bf16: str = "auto"

    def __post_init__(self) -> None:
        for name in ("lora", "gradient_checkpointing", "bf16"):
            if getattr(self, name) not in SWITCHES:
                raise ValueError(f"{name}={getattr(self, name)!r}: choose one of {', '.join(SWITCHES)}")
        if self.lora_rank < 1 or self.lora_alpha <= 0 or not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_rank={self.lora_rank}, lora_alpha={self.lora_alpha}, lora_dropout="
                             f"{self.lora_dropout}: need rank >= 1, alpha > 0 and 0 <= dropout < 1")
        if not self.lora_targets:
            raise ValueError("lora_targets is empty: name the modules to adapt, or all-linear")


INTENT_PRIORS = ("popularity", "text")


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    eval_k: int = 3  # Recall/NDCG/HitRate@K of SPEC §4
    infer_batch: int = 128  # prompts per forward when computing latent queries
    # the QE ranker's fixed intent bias: "text" (item popularity smoothed toward a text regression
    # where cross-validation says the intents' text predicts their like rate, else popularity
    # exactly: `rgalign.training.intent_prior`) or "popularity" (as the baseline's). On
    # MovieLens-100K the text prior alone lifts test GAUC 0.6955 -> 0.6985; on the synthetic data
    # it moves no rate by more than 0.002 (README, Results)
    intent_prior: str = "text"
    reasoner: ReasonerSizes = field(default_factory=ReasonerSizes)
    ranker: ModelSizes = field(default_factory=ModelSizes)
    baseline: RankerStageConfig = field(default_factory=RankerStageConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    reward: RankerStageConfig = field(default_factory=RankerStageConfig)
    rg_sft: RGSFTConfig = field(default_factory=RGSFTConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    rg_cl: RGCLConfig = field(default_factory=RGCLConfig)
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def __post_init__(self) -> None:
        if self.intent_prior not in INTENT_PRIORS:
            raise ValueError(f"intent_prior {self.intent_prior!r}: choose one of {', '.join(INTENT_PRIORS)}")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> TrainConfig:
        return from_dict(cls, d, where="train config")

    def with_backbone(self, backbone: str | None) -> TrainConfig:
        if backbone is None:
            return self
        return replace(self, reasoner=replace(self.reasoner, backbone=backbone))

    def with_lora(self, lora: str | None) -> TrainConfig:
        """``--lora auto|on|off`` over the config's ``finetune.lora``."""
        if lora is None:
            return self
        try:
            return replace(self, finetune=replace(self.finetune, lora=lora))
        except ValueError as e:
            from rgalign.errors import ConfigError

            raise ConfigError(f"--lora: {e}") from None
