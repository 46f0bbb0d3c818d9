"""The Query-Enhanced (QE) ranker: three towers with mutual attention, scoring every KB intent.

    user/context tower: cat (B, Fc), num (B, Fn) --FieldEmbedding--> --AutoInt--> fields (B, F, D)
    query tower:        latent query (B, d) --Linear--> Lq query tokens (B, Lq, D)
    mutual attention:   x cross_layers:  query tokens attend to field tokens, and field tokens
                        attend to query tokens (both from the previous layer's tokens)
                        -> fused tokens T = [fields; queries] (B, F + Lq, D)
    intent tower:       id embedding (N, K) + Linear(intent text embedding (N, H)) --MLP--> v (N, K)
                        (the text embedding is the reasoner backbone's pooled hidden state of the
                        intent text, a BUFFER ``intent_text_emb`` computed once per KB)
    score (B, S):       MoE gated expert dot products on flatten(T)        (see MixtureOfExpertsScorer)
                      + intent-to-request target attention:  each intent v_n attends over the
                        fused tokens T, c_bn = softmax(W_q v_n . W_k T_b) W_v T_b, term <c_bn, W_o v_n>
                      + query-intent affinity  q W z_n  (z_n: the intent text's latent in the
                        latent query's space, a buffer; W starts at 0)
                      + intent bias b_n (item popularity, fixed, see IntentIds)

The target-attention term is the "intent attends to the fused user/query tokens" path: it lets the
latent query modulate each intent's score separately, yet it is batched matmuls of (B, N, L)
attention weights (L = F + Lq, about 15), so `score_all` scores all N intents in one pass, no
loop. All paths are tensor ops only, so `torch.onnx.export` traces one graph with the KB table
(intent embeddings and text buffer) inside it.

Example:
    >>> m = QERanker(QERankerConfig(cardinalities=(4, 6, 3), n_numeric=2, n_intents=50,
    ...                             d_query=64, text_dim=64))
    >>> m.set_intent_text_emb(reasoner.encode_texts(intent_texts))      # (50, 64)
    >>> m.score_all(cat, num, query).shape                               # query (B, 64)
    torch.Size([B, 50])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rgalign.errors import ConfigError
from rgalign.models.layers import CrossAttention, MixtureOfExpertsScorer
from rgalign.models.ranker import Ranker, RankerConfig

KIND = "qe_ranker"


@dataclass(frozen=True)
class QERankerConfig(RankerConfig):
    """The shared ranker knobs (`RankerConfig`) and the query tower's."""

    field_dim: int = 32  # field and query tokens share it, since they attend to each other
    d_query: int = 64  # the reasoner's latent query size
    text_dim: int = 256  # the reasoner backbone's hidden size (intent text table); 0 = no text
    query_tokens: int = 4  # one d-vector split into a few tokens: several "aspects" to attend with
    cross_layers: int = 2

    def __post_init__(self) -> None:
        self._check_features("QE ranker")
        if self.d_query < 1 or self.query_tokens < 1 or self.text_dim < 0:
            raise ConfigError("QE ranker needs d_query >= 1, query_tokens >= 1, text_dim >= 0")


class QERanker(Ranker):
    """Three-tower ranker with mutual cross-attention over a fixed KB of ``n_intents`` intents."""

    KIND = KIND
    CONFIG = QERankerConfig

    def __init__(self, config: QERankerConfig) -> None:
        super().__init__(config)
        c = config
        # the KB's intent text embeddings (from the reasoner backbone); zeros until set. A buffer:
        # saved in the checkpoint and exported as a constant, never trained
        self.register_buffer("intent_text_emb", torch.zeros(c.n_intents, max(c.text_dim, 0)))
        # query-intent affinity: the intents' latents in the latent query's own space (the
        # reasoner's `encode_prompts` of the intent texts: what RG-CL aligns a request's latent
        # query with), compared with the latent query through a bilinear map that starts at 0
        self.register_buffer("intent_latent", torch.zeros(c.n_intents, c.d_query))
        self.affinity = nn.Parameter(torch.zeros(c.d_query, c.d_query))

    def _build(self, c: QERankerConfig) -> None:
        self._user_tower(c)
        # query tower
        self.query_in = nn.Linear(c.d_query, c.query_tokens * c.field_dim)
        self.query_pos = nn.Parameter(torch.randn(c.query_tokens, c.field_dim) * 0.02)
        # mutual attention
        self.q_from_f = nn.ModuleList(
            CrossAttention(c.field_dim, c.attn_heads, dropout=c.dropout) for _ in range(c.cross_layers)
        )
        self.f_from_q = nn.ModuleList(
            CrossAttention(c.field_dim, c.attn_heads, dropout=c.dropout) for _ in range(c.cross_layers)
        )
        self.token_norm = nn.LayerNorm(c.field_dim)
        self._intent_tower(c, c.text_dim)
        # score heads
        n_tokens = len(c.cardinalities) + c.n_numeric + c.query_tokens
        self.head = MixtureOfExpertsScorer(n_tokens * c.field_dim, c.dim, c.n_experts, c.expert_hidden, c.dropout)
        self.ta_q = nn.Linear(c.dim, c.dim, bias=False)
        self.ta_k = nn.Linear(c.field_dim, c.dim, bias=False)
        self.ta_v = nn.Linear(c.field_dim, c.dim, bias=False)
        self.ta_o = nn.Linear(c.dim, c.dim, bias=False)

    def set_intent_text_emb(self, emb: torch.Tensor) -> None:
        """Install the KB's text embeddings (N, text_dim), e.g. ``reasoner.encode_texts(texts)``."""
        _install(self.intent_text_emb, emb, "intent text embeddings")

    def set_intent_latents(self, z: torch.Tensor) -> None:
        """Install the KB's intent latents (N, d_query), e.g. ``reasoner.encode_prompts(texts)``."""
        _install(self.intent_latent, z, "intent latents")

    def _affinity(self, query: torch.Tensor) -> torch.Tensor:
        """(B, d) latent queries -> (B, N) bilinear affinity ``q W z_n`` with every intent."""
        return (query @ self.affinity) @ self.intent_latent.T

    # ---- towers -----------------------------------------------------------------------------

    def request_tokens(self, cat: torch.Tensor, num: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Fused user/context + query tokens: cat (B, Fc), num (B, Fn), query (B, d)
        -> (B, F + Lq, field_dim)."""
        f = self.field_tokens(cat, num)
        q = self.query_in(query).view(query.shape[0], self.config.query_tokens, -1) + self.query_pos
        for q_att, f_att in zip(self.q_from_f, self.f_from_q):
            q, f = q_att(q, f), f_att(f, q)  # mutual: both read the other's previous tokens
        return self.token_norm(torch.cat([f, q], dim=1))

    def _score(self, tokens: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """tokens (B, L, field_dim), intent vectors v (B, S, dim) or (1, S, dim) -> (B, S)."""
        moe = self.head(tokens.flatten(1), v)
        keys = self.ta_k(tokens)  # (B, L, dim)
        att = torch.softmax(self.ta_q(v) @ keys.transpose(1, 2) / self.config.dim**0.5, dim=-1)  # (B, S, L)
        context = att @ self.ta_v(tokens)  # (B, S, dim)
        return moe + (context * self.ta_o(v)).sum(dim=-1)

    # ---- scoring ----------------------------------------------------------------------------

    def forward(
        self, cat: torch.Tensor, num: torch.Tensor, query: torch.Tensor, intent_idx: torch.Tensor
    ) -> torch.Tensor:
        """Logits of the given intents: cat (B, Fc) int64, num (B, Fn) float32, query (B, d),
        intent_idx (B, S) int64 -> (B, S)."""
        table, bias = self.intents()
        v = table[intent_idx]  # (B, S, dim)
        aff = torch.gather(self._affinity(query), 1, intent_idx)
        return self.gate * self._score(self.request_tokens(cat, num, query), v) + aff + bias[intent_idx]

    def score_all(self, cat: torch.Tensor, num: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Logits of every KB intent in one pass: (B, Fc), (B, Fn), (B, d) -> (B, N)."""
        table, bias = self.intents()
        v = table.unsqueeze(0)  # (1, N, dim), broadcast over the batch
        return self.gate * self._score(self.request_tokens(cat, num, query), v) + self._affinity(query) + bias

    def topk(
        self, cat: torch.Tensor, num: torch.Tensor, query: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k logits and KB indices: ((B, k) float32, (B, k) int64), best first."""
        return torch.topk(self.score_all(cat, num, query), k, dim=-1)


def _install(buffer: torch.Tensor, value: torch.Tensor, what: str) -> None:
    """Copy ``value`` into the KB table ``buffer``, whose shape it must have (N, width)."""
    if tuple(value.shape) != tuple(buffer.shape):
        raise ConfigError(f"{what} have shape {tuple(value.shape)}, the QE ranker needs {tuple(buffer.shape)}")
    with torch.no_grad():
        buffer.copy_(value.to(buffer))
