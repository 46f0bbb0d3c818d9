"""What the two rankers, the baseline `AutoIntMoE` and the `QERanker`, share: their configs' feature
checks and (de)serialisation, the user/context tower (field embeddings, then AutoInt layers), the
intent tower (ids, the popularity gate, an optional text projection, the residual MLP), and a
checkpoint folder per model kind.

Both build these parts in the same order inside the seeded ``Ranker.__init__`` (the order fixes
which random numbers each weight gets), and under the same attribute names, which are the
checkpoints' and the exported graphs' tensor names.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from rgalign.config import from_dict
from rgalign.errors import ConfigError
from rgalign.models.checkpoint import read_checkpoint, save_module, upgrade_ranker_state
from rgalign.models.layers import FieldEmbedding, IntentIds, InteractingLayer


@dataclass(frozen=True)
class RankerConfig:
    """The knobs both rankers have (the QE ranker adds its query tower's), the checks their
    ``__post_init__`` runs (`_check_features`), and ``to_dict`` / ``from_dict`` (``cardinalities``
    as a list in JSON)."""

    cardinalities: tuple[int, ...]  # per categorical field, OOV bucket 0 included
    n_numeric: int
    n_intents: int
    field_dim: int = 16  # AutoInt's usual embedding size; ~10 fields x 16 = a 160-d flat vector
    attn_layers: int = 2  # AutoInt layers in the user/context tower
    attn_heads: int = 2
    dim: int = 64  # user/intent vector size for the dot products (as the latent query's d)
    n_experts: int = 4
    expert_hidden: int = 128
    dropout: float = 0.1
    id_dropout: float = 0.05  # categorical ids -> OOV bucket in training (see FieldEmbedding)
    intent_dropout: float = 0.1  # known intents treated as cold in training (see IntentIds)
    seed: int = 0

    def _check_features(self, what: str) -> None:
        """Normalise ``cardinalities`` to a tuple of ints; ConfigError, saying ``what`` needs it, for
        an empty or impossible feature set and for a field size the attention heads do not divide."""
        object.__setattr__(self, "cardinalities", tuple(int(c) for c in self.cardinalities))
        if any(c < 1 for c in self.cardinalities) or self.n_numeric < 0 or self.n_intents < 1:
            raise ConfigError(
                f"{what} needs cardinalities >= 1, n_numeric >= 0, n_intents >= 1; got "
                f"{list(self.cardinalities)}, {self.n_numeric}, {self.n_intents}"
            )
        if len(self.cardinalities) + self.n_numeric == 0:
            raise ConfigError(f"{what} needs at least one categorical or numeric feature")
        if self.field_dim % self.attn_heads:
            raise ConfigError(f"field_dim {self.field_dim} must divide by attn_heads {self.attn_heads}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cardinalities"] = list(self.cardinalities)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        return from_dict(cls, d, where=cls.__name__)


class Ranker(nn.Module):
    """Base of the rankers: subclasses set ``KIND`` (the checkpoint's kind) and ``CONFIG`` (the
    config class) and build their weights in `_build`, calling `_user_tower` and `_intent_tower`
    and adding their own score head."""

    KIND: ClassVar[str]
    CONFIG: ClassVar[type]

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        with torch.random.fork_rng(devices=[]):  # seeded init, global RNG untouched
            torch.manual_seed(config.seed)
            self._build(config)

    def _build(self, c: Any) -> None:
        raise NotImplementedError

    def _user_tower(self, c: Any) -> None:
        """``fields``: categorical ids and numbers -> (B, F, field_dim) tokens; ``interacting``:
        the AutoInt layers over them."""
        self.fields = FieldEmbedding(c.cardinalities, c.n_numeric, c.field_dim, c.id_dropout)
        self.interacting = nn.ModuleList(
            InteractingLayer(c.field_dim, c.attn_heads, c.dropout) for _ in range(c.attn_layers)
        )

    def _intent_tower(self, c: Any, text_dim: int = 0) -> None:
        """``intent_ids`` (embeddings and popularity biases), ``gate``, ``text_in`` (the intent text
        embedding's projection, None without text) and ``intent_mlp``."""
        self.intent_ids = IntentIds(c.n_intents, c.dim, c.intent_dropout)
        # the learned part of the score is scaled by a gate; training sets it to 0 when it
        # installs the popularity prior (`rgalign.training.context.init_intent_prior`, ReZero):
        # the ranker then starts as item popularity exactly, and moves away from it only as far
        # as the valid GAUC rewards (early stopping keeps the starting weights otherwise)
        self.gate = nn.Parameter(torch.ones(()))
        self.text_in = nn.Linear(text_dim, c.dim) if text_dim else None
        self.intent_mlp = nn.Sequential(nn.Linear(c.dim, 2 * c.dim), nn.GELU(), nn.Linear(2 * c.dim, c.dim))

    def field_tokens(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        """cat (B, Fc) int64, num (B, Fn) float32 -> interacted field tokens (B, F, field_dim)."""
        x = self.fields(cat, num)
        for layer in self.interacting:
            x = layer(x)
        return x

    def intents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The KB's intent vectors (N, dim): id embedding (the shared cold one for an intent never
        shown in training), plus the projected text embedding where there is one, MLP'd; and their
        biases (N,)."""
        e, bias = self.intent_ids()
        if self.text_in is not None:
            e = e + self.text_in(self.intent_text_emb)
        return e + self.intent_mlp(e), bias

    def intent_table(self) -> torch.Tensor:
        """The KB's intent vectors (N, dim)."""
        return self.intents()[0]

    def save(self, directory: str | os.PathLike) -> Path:
        return save_module(directory, self, self.KIND, self.config.to_dict())

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Any:
        config, state = read_checkpoint(directory, cls.KIND)
        model = cls(cls.CONFIG.from_dict(config))
        model.load_state_dict(upgrade_ranker_state(state, model.state_dict()))
        return model.eval()
