"""Building blocks shared by the rankers. Every forward is export-friendly: tensor ops only, no
Python branching on tensor values (branches on the *configuration* are fine, they are fixed at
trace time).

- `FieldEmbedding`: categorical ids and standardised numerics -> one D-vector per field (B, F, D)
- `InteractingLayer`: AutoInt's multi-head self-attention over fields, with residual (B, F, D)
- `MixtureOfExperts`: E expert MLPs mixed by a softmax gate (..., in) -> (..., out)
- `CrossAttention`: tokens attend to another set of tokens (pre-norm block with FFN)
"""

from __future__ import annotations

import math

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class FieldEmbedding(nn.Module):
    """Embed ``Fc`` categorical and ``Fn`` numeric fields as ``Fc + Fn`` tokens of size D.

    Categorical: one table for all fields, field f's ids shifted by the sum of the cardinalities
    before it (one lookup, one weight tensor, as torchrec's EmbeddingBagCollection does). An id
    outside ``[0, cardinality)`` is mapped to 0, the OOV bucket, so a bad id never crashes.
    Numeric: field f's token is ``x_f * w_f + b_f`` (AutoInt's numeric embedding), so the value
    scales a learned direction.

    ``oov_dropout``: in training, each categorical id is replaced by the OOV bucket 0 with this
    probability, so that bucket's embedding is trained: a user or value unseen in training (most
    test users of a real log) then scores through a learned vector, not a random one.

    Shapes: cat (B, Fc) int64, num (B, Fn) float32 -> (B, Fc + Fn, D).
    """

    def __init__(self, cardinalities: Sequence[int], n_numeric: int, dim: int, oov_dropout: float = 0.0) -> None:
        super().__init__()
        self.oov_dropout = float(oov_dropout)
        self.n_categorical = len(cardinalities)
        self.n_numeric = n_numeric
        self.dim = dim
        cards = torch.tensor([int(c) for c in cardinalities], dtype=torch.long)
        offsets = torch.cumsum(cards, 0) - cards
        self.register_buffer("cardinalities", cards, persistent=False)
        self.register_buffer("offsets", offsets, persistent=False)
        total = int(cards.sum()) if len(cards) else 1
        self.table = nn.Embedding(total, dim)
        nn.init.normal_(self.table.weight, std=0.05)
        self.num_weight = nn.Parameter(torch.randn(n_numeric, dim) * 0.05)
        self.num_bias = nn.Parameter(torch.zeros(n_numeric, dim))

    @property
    def n_fields(self) -> int:
        return self.n_categorical + self.n_numeric

    def forward(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        tokens = []
        if self.n_categorical:
            ok = (cat >= 0) & (cat < self.cardinalities)
            if self.training and self.oov_dropout > 0:
                ok = ok & (torch.rand(cat.shape, device=cat.device) >= self.oov_dropout)
            ids = torch.where(ok, cat, torch.zeros_like(cat)) + self.offsets
            tokens.append(self.table(ids))
        if self.n_numeric:
            tokens.append(num.unsqueeze(-1) * self.num_weight + self.num_bias)
        return torch.cat(tokens, dim=1)


class InteractingLayer(nn.Module):
    """AutoInt's interacting layer: multi-head self-attention across fields, plus a projected
    residual, then ReLU (Song et al., 2019). (B, F, D) -> (B, F, D)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must divide by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.res = nn.Linear(dim, dim, bias=False)
        self.norm = nn.LayerNorm(dim)  # not in AutoInt; keeps stacked layers trainable
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, f, d = x.shape
        q, k, v = self.qkv(x).view(b, f, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
        out = (self.dropout(att) @ v).transpose(1, 2).reshape(b, f, d)
        return self.norm(F.relu(out + self.res(x)))


# the brief's name for the same block
MultiHeadSelfAttention = InteractingLayer


class MixtureOfExperts(nn.Module):
    """E two-layer expert MLPs mixed by a softmax gate on the same input (MMoE-style, one task).

    Experts are batched weight tensors (one einsum, not a Python loop over experts).
    Shapes: (..., in_dim) -> (..., out_dim); `forward_experts` gives (..., E, out_dim) and the
    gate (..., E) separately, for heads that combine experts in their own way.
    """

    def __init__(self, in_dim: int, out_dim: int, n_experts: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_experts = n_experts
        self.w1 = nn.Parameter(torch.empty(n_experts, in_dim, hidden))
        self.b1 = nn.Parameter(torch.zeros(n_experts, hidden))
        self.w2 = nn.Parameter(torch.empty(n_experts, hidden, out_dim))
        self.b2 = nn.Parameter(torch.zeros(n_experts, out_dim))
        for w in (self.w1, self.w2):  # per-expert Kaiming-uniform, as nn.Linear does
            for e in range(n_experts):
                nn.init.kaiming_uniform_(w.data[e].T, a=5**0.5)
        self.gate = nn.Linear(in_dim, n_experts)
        self.dropout = nn.Dropout(dropout)

    def forward_experts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., in) -> experts (..., E, out), gate (..., E) (softmax)."""
        h = F.gelu(torch.einsum("...i,eih->...eh", x, self.w1) + self.b1)
        out = torch.einsum("...eh,eho->...eo", self.dropout(h), self.w2) + self.b2
        return out, torch.softmax(self.gate(x), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        experts, gate = self.forward_experts(x)
        return (gate.unsqueeze(-1) * experts).sum(dim=-2)


class CrossAttention(nn.Module):
    """Tokens ``x`` (B, Lq, D) attend to ``context`` (B, Lk, D); pre-norm, residual, then a
    residual FFN. An optional key mask (B, Lk) (1 = attend) hides padded keys. -> (B, Lq, D)."""

    def __init__(self, dim: int, heads: int, ffn_mult: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must divide by heads {heads}")
        self.heads = heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_mult * dim), nn.GELU(), nn.Linear(ffn_mult * dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, lq, d = x.shape
        lk = context.shape[1]
        dh = d // self.heads
        q = self.q(self.norm_q(x)).view(b, lq, self.heads, dh).transpose(1, 2)
        k, v = self.kv(self.norm_kv(context)).view(b, lk, 2, self.heads, dh).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / dh**0.5  # (B, h, Lq, Lk)
        if key_mask is not None:
            scores = scores.masked_fill(key_mask[:, None, None, :] == 0, torch.finfo(scores.dtype).min)
        att = self.dropout(torch.softmax(scores, dim=-1))
        x = x + self.out((att @ v).transpose(1, 2).reshape(b, lq, d))
        return x + self.dropout(self.ffn(self.norm_ffn(x)))


class MixtureOfExpertsScorer(nn.Module):
    """Score (request, intent) pairs with a mixture of expert dot products whose gate sees both.

    The request side ``x`` (B, in) goes through E expert MLPs to E vectors u_e (B, E, D); the
    gate is ``softmax(G_x x + G_v v)`` over experts, so *which* expert's view of the user counts
    depends on the intent being scored (one intent family may hinge on the order status, another
    on the user's tier). The score is ``sum_e g_e <u_e, v>``.

    Being additive in x and v inside the gate, and a dot product outside, it scores one request
    against all N intents with two matmuls: no (B, N, in) tensor, no loop over intents.

    Shapes: x (B, in), v (B, S, D) or (1, S, D) (the whole KB, broadcast) -> (B, S).
    """

    def __init__(self, in_dim: int, dim: int, n_experts: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.moe = MixtureOfExperts(in_dim, dim, n_experts, hidden, dropout)
        self.gate_v = nn.Linear(dim, n_experts, bias=False)

    def forward(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        experts, _ = self.moe.forward_experts(x)  # (B, E, D)
        gate_logits = self.moe.gate(x).unsqueeze(1) + self.gate_v(v)  # (B, 1, E) + (B|1, S, E)
        dots = v @ experts.transpose(1, 2)  # (B|1, S, D) @ (B, D, E) -> (B, S, E)
        return (torch.softmax(gate_logits, dim=-1) * dots).sum(dim=-1)


class IntentIds(nn.Module):
    """The intent-id part of an intent tower: an id embedding (N, dim) and a bias (N,), with one
    shared *cold* embedding and bias for intents never shown in training.

    ``known`` (N,) is a buffer (1 = shown in training, set by `set_known`; all ones until set).
    A cold intent's id embedding and bias are the shared cold ones, so it is scored from what the
    tower knows beyond its id (its text, in the QE ranker), never from an untrained random row.
    In training, ``intent_dropout`` of the known intents are treated as cold at each forward, so
    the cold embedding and the text path learn to stand in for an id.

    ``init_bias(p, p0)`` starts the biases at the logit of each intent's smoothed training like
    rate (and the cold bias at the overall rate's): the ranker starts from item popularity and
    its training has only to learn what goes beyond it.
    """

    def __init__(self, n_intents: int, dim: int, intent_dropout: float = 0.0) -> None:
        super().__init__()
        self.intent_dropout = float(intent_dropout)
        self.emb = nn.Embedding(n_intents, dim)
        nn.init.normal_(self.emb.weight, std=0.05)
        self.bias = nn.Parameter(torch.zeros(n_intents))
        self.cold_emb = nn.Parameter(torch.zeros(dim))
        self.cold_bias = nn.Parameter(torch.zeros(()))
        self.register_buffer("known", torch.ones(n_intents))

    def set_known(self, known: torch.Tensor) -> None:
        with torch.no_grad():
            self.known.copy_(torch.as_tensor(known, dtype=self.known.dtype))

    def init_bias(self, rates: torch.Tensor, overall: float) -> None:
        """Biases from like rates (N,) in (0, 1) and the overall rate."""
        r = torch.as_tensor(rates, dtype=torch.float32).clamp(1e-4, 1 - 1e-4)
        o = min(max(float(overall), 1e-4), 1 - 1e-4)
        with torch.no_grad():
            self.bias.copy_(torch.log(r / (1 - r)))
            self.cold_bias.fill_(math.log(o / (1 - o)))

    def freeze_bias(self) -> None:
        """Keep the biases where `init_bias` put them: item popularity as a fixed offset (a GLM's
        prior), what the rest of the ranker learns is what goes beyond it. Trained, a rare
        intent's bias un-learns the smoothing (two likes in two shows -> a top intent)."""
        self.bias.requires_grad_(False)
        self.cold_bias.requires_grad_(False)

    def _known(self) -> torch.Tensor:
        k = self.known
        if self.training and self.intent_dropout > 0:
            k = k * (torch.rand(k.shape, device=k.device) >= self.intent_dropout).to(k.dtype)
        return k

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(id embeddings (N, dim), biases (N,)), cold intents' rows replaced by the cold ones."""
        k = self._known()
        e = k[:, None] * self.emb.weight + (1 - k)[:, None] * self.cold_emb
        return e, k * self.bias + (1 - k) * self.cold_bias
