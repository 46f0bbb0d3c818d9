"""The paper's industrial baseline: AutoInt + mixture-of-experts, two towers. Ids only: it never
sees the text features (that is what the reasoner adds).

    user/context tower:  cat (B, Fc), num (B, Fn) --FieldEmbedding--> (B, F, D)
                         --AutoInt interacting layers--> (B, F, D) --flatten--> x (B, F*D)
    intent tower:        intent id --embedding--> (N, K) --MLP (residual)--> v (N, K)
    score:               MoE expert dot products, gate on (user, intent), + intent bias

The score head (`MixtureOfExpertsScorer`): E experts map x to user vectors u_e (K); a gate that
sees both the user and the intent mixes the dot products ``<u_e, v_n>``; a per-intent bias b_n
carries each intent's popularity. Why this head rather than an MLP on ``concat(u, v, u*v)``:
the gated dot product can condition on the pair (through the gate) while scoring one request
against all N intents with two matmuls, which `score_all` (and serving) needs; an MLP on the
concatenation costs a (B, N, 3K) MLP pass per request at serving time, N times the work.

Example:
    >>> m = AutoIntMoE(BaselineConfig(cardinalities=(4, 6, 3), n_numeric=2, n_intents=50))
    >>> m.score_all(cat, num).shape            # cat (B, 3) int64, num (B, 2) float32
    torch.Size([B, 50])
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rgalign.config import from_dict
from rgalign.errors import ConfigError
from rgalign.models.checkpoint import read_checkpoint, save_module, upgrade_ranker_state
from rgalign.models.layers import FieldEmbedding, IntentIds, InteractingLayer, MixtureOfExpertsScorer

KIND = "baseline_autoint_moe"


@dataclass(frozen=True)
class BaselineConfig:
    cardinalities: tuple[int, ...]  # per categorical field, OOV bucket 0 included
    n_numeric: int
    n_intents: int
    field_dim: int = 16  # AutoInt's usual embedding size; ~10 fields x 16 = a 160-d flat vector
    attn_layers: int = 2
    attn_heads: int = 2
    dim: int = 64  # user/intent vector size for the dot products (as the latent query's d)
    n_experts: int = 4
    expert_hidden: int = 128
    dropout: float = 0.1
    id_dropout: float = 0.05  # categorical ids -> OOV bucket in training (see FieldEmbedding)
    intent_dropout: float = 0.1  # known intents treated as cold in training (see IntentIds)
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "cardinalities", tuple(int(c) for c in self.cardinalities))
        if any(c < 1 for c in self.cardinalities) or self.n_numeric < 0 or self.n_intents < 1:
            raise ConfigError(
                f"baseline needs cardinalities >= 1, n_numeric >= 0, n_intents >= 1; got "
                f"{list(self.cardinalities)}, {self.n_numeric}, {self.n_intents}"
            )
        if len(self.cardinalities) + self.n_numeric == 0:
            raise ConfigError("baseline needs at least one categorical or numeric feature")
        if self.field_dim % self.attn_heads:
            raise ConfigError(f"field_dim {self.field_dim} must divide by attn_heads {self.attn_heads}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cardinalities"] = list(self.cardinalities)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BaselineConfig:
        return from_dict(cls, d, where=cls.__name__)


class AutoIntMoE(nn.Module):
    """Two-tower AutoInt + MoE ranker over a fixed KB of ``n_intents`` intents."""

    def __init__(self, config: BaselineConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        with torch.random.fork_rng(devices=[]):  # seeded init, global RNG untouched
            torch.manual_seed(c.seed)
            self.fields = FieldEmbedding(c.cardinalities, c.n_numeric, c.field_dim, c.id_dropout)
            self.interacting = nn.ModuleList(
                InteractingLayer(c.field_dim, c.attn_heads, c.dropout) for _ in range(c.attn_layers)
            )
            n_fields = len(c.cardinalities) + c.n_numeric
            self.intent_ids = IntentIds(c.n_intents, c.dim, c.intent_dropout)
            # the learned part of the score is scaled by a gate; training sets it to 0 when it
            # installs the popularity prior (`rgalign.training.context.init_intent_prior`, ReZero):
            # the ranker then starts as item popularity exactly, and moves away from it only as far
            # as the valid GAUC rewards (early stopping keeps the starting weights otherwise)
            self.gate = nn.Parameter(torch.ones(()))
            self.intent_mlp = nn.Sequential(nn.Linear(c.dim, 2 * c.dim), nn.GELU(), nn.Linear(2 * c.dim, c.dim))
            self.head = MixtureOfExpertsScorer(n_fields * c.field_dim, c.dim, c.n_experts, c.expert_hidden, c.dropout)

    def user_vector(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        """cat (B, Fc) int64, num (B, Fn) float32 -> flattened interacted fields (B, F*field_dim)."""
        x = self.fields(cat, num)
        for layer in self.interacting:
            x = layer(x)
        return x.flatten(1)

    def intents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The KB's intent vectors (N, dim) and biases (N,) (cold intents: the shared cold ones)."""
        e, bias = self.intent_ids()
        return e + self.intent_mlp(e), bias

    def intent_table(self) -> torch.Tensor:
        """The KB's intent vectors (N, dim)."""
        return self.intents()[0]

    def forward(self, cat: torch.Tensor, num: torch.Tensor, intent_idx: torch.Tensor) -> torch.Tensor:
        """Logits of the given intents: cat (B, Fc), num (B, Fn), intent_idx (B, S) -> (B, S)."""
        table, bias = self.intents()
        v = table[intent_idx]  # (B, S, dim)
        return self.gate * self.head(self.user_vector(cat, num), v) + bias[intent_idx]

    def score_all(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        """Logits of every KB intent in one pass: (B, Fc), (B, Fn) -> (B, N)."""
        table, bias = self.intents()
        v = table.unsqueeze(0)  # (1, N, dim), broadcast over the batch
        return self.gate * self.head(self.user_vector(cat, num), v) + bias

    def topk(self, cat: torch.Tensor, num: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k logits and KB indices: ((B, k) float32, (B, k) int64), best first."""
        return torch.topk(self.score_all(cat, num), k, dim=-1)

    def save(self, directory: str | os.PathLike) -> Path:
        return save_module(directory, self, KIND, self.config.to_dict())

    @classmethod
    def load(cls, directory: str | os.PathLike) -> AutoIntMoE:
        config, state = read_checkpoint(directory, KIND)
        model = cls(BaselineConfig.from_dict(config))
        model.load_state_dict(upgrade_ranker_state(state, model.state_dict()))
        return model.eval()
