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

from dataclasses import dataclass

import torch

from rgalign.models.layers import MixtureOfExpertsScorer
from rgalign.models.ranker import Ranker, RankerConfig

KIND = "baseline_autoint_moe"


@dataclass(frozen=True)
class BaselineConfig(RankerConfig):
    """The shared ranker knobs (`RankerConfig`), nothing more: the baseline reads ids only."""

    def __post_init__(self) -> None:
        self._check_features("baseline")


class AutoIntMoE(Ranker):
    """Two-tower AutoInt + MoE ranker over a fixed KB of ``n_intents`` intents."""

    KIND = KIND
    CONFIG = BaselineConfig

    def _build(self, c: BaselineConfig) -> None:
        self._user_tower(c)
        n_fields = len(c.cardinalities) + c.n_numeric
        self._intent_tower(c)  # ids only: no text
        self.head = MixtureOfExpertsScorer(n_fields * c.field_dim, c.dim, c.n_experts, c.expert_hidden, c.dropout)

    def user_vector(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        """cat (B, Fc) int64, num (B, Fn) float32 -> flattened interacted fields (B, F*field_dim)."""
        return self.field_tokens(cat, num).flatten(1)

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
