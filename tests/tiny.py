"""Tiny, seeded, in-memory models and data for the tests (only the tests use them, so they live
here, beside fakes.py, not in the package): a 50-intent KB, requests with 3 categorical, 2 numeric and 1 text
feature, a tokenizer trained on them, a 2-layer reasoner (hidden 64) and both rankers.

Everything here is deterministic in ``seed`` and builds in about a second on a 2-core CPU.
The data package is not used: these stand-ins have the same shapes (cat (B, Fc) int64 with id 0
the OOV bucket, num (B, Fn) float32 standardised, intent texts in KB order).
"""

from __future__ import annotations

import functools
import random
from typing import Any

import torch

from rgalign.models.baseline import AutoIntMoE, BaselineConfig
from rgalign.models.prompt import PromptFields, build_prompt
from rgalign.models.qe_ranker import QERanker, QERankerConfig
from rgalign.models.reasoner import Reasoner, ReasonerConfig
from rgalign.models.tokenizer import train_tokenizer

TIERS = ("bronze", "silver", "gold", "platinum")
REGIONS = ("SG", "MY", "TH", "VN", "PH", "ID")
PAGES = ("home", "order_detail", "cart", "me")
ACTIONS = ("checked tracking", "opened chat", "viewed refund policy", "added to cart",
           "paid with wallet", "cancelled order", "searched vouchers")

TINY_FIELDS = PromptFields(
    user_categorical=("tier", "region"),
    user_numeric=("age",),
    context_categorical=("entry_page",),
    context_numeric=("days_since_last_order",),
    context_text=("recent_actions",),
)
# index 0 of each vocabulary is the OOV bucket, as in rgalign.data's encoders
TINY_CARDINALITIES = (len(TIERS) + 1, len(REGIONS) + 1, len(PAGES) + 1)
TINY_N_NUMERIC = 2

_TOPICS = {
    "logistics": ["Where is my parcel", "My parcel is late", "Change delivery address", "Track my order"],
    "returns": ["How do I return an item", "Refund status", "Return shipping fee", "Item arrived damaged"],
    "payments": ["Payment failed", "Wallet top up", "Card was charged twice", "Pay later options"],
    "account": ["Reset my password", "Change phone number", "Delete my account", "Verify my email"],
    "promotions": ["How to use a voucher", "Voucher not working", "Flash sale times", "Free shipping rules"],
}


def tiny_kb(n: int = 50, seed: int = 0) -> tuple[list[str], list[str]]:
    """(intent_ids, intent_texts) of an ``n``-intent KB, texts unique, in KB order."""
    rng = random.Random(seed)
    texts: list[str] = []
    variants = ["", " please", " today", " now", " again", " for my order", " help", " urgently",
                " on the app", " with the seller", " in my region"]
    i = 0
    while len(texts) < n:
        for topic, base in _TOPICS.items():
            for b in base:
                t = b + variants[i % len(variants)] + ("?" if rng.random() < 0.5 else "")
                if t not in texts and len(texts) < n:
                    texts.append(t)
        i += 1
    return [f"intent_{k:03d}" for k in range(n)], texts


def tiny_requests(n: int = 64, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` raw feature dicts (what a client sends), including a float and an odd value."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        out.append({
            "tier": rng.choice(TIERS),
            "region": rng.choice(REGIONS),
            "age": rng.randint(18, 70),
            "entry_page": rng.choice(PAGES),
            "days_since_last_order": round(rng.expovariate(1 / 6), 3),
            "recent_actions": "; ".join(rng.sample(ACTIONS, rng.randint(1, 3))),
        })
    return out


def tiny_encoded(requests: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode tiny requests as the data package would: cat (B, 3) int64, num (B, 2) float32."""
    vocabs = (TIERS, REGIONS, PAGES)
    names = ("tier", "region", "entry_page")
    cat = torch.tensor(
        [[(vocab.index(r[k]) + 1) if r[k] in vocab else 0 for k, vocab in zip(names, vocabs)] for r in requests],
        dtype=torch.long,
    )
    num = torch.tensor([[(r["age"] - 40) / 15, (r["days_since_last_order"] - 6) / 6] for r in requests],
                       dtype=torch.float32)
    return cat, num


@functools.lru_cache(maxsize=4)
def tiny_tokenizer(seed: int = 0, vocab_size: int = 512):
    """A byte-level BPE trained on tiny prompts and the KB texts (cached: same object per args).

    Callers that change ``padding_side`` should restore it (or copy the tokenizer)."""
    prompts = [build_prompt(r, TINY_FIELDS) for r in tiny_requests(400, seed)]
    _, texts = tiny_kb(50, seed)
    return train_tokenizer(prompts + texts * 4, vocab_size=vocab_size)


def tiny_reasoner_config(**overrides: Any) -> ReasonerConfig:
    """2 layers x 64 hidden: the smallest Qwen3 shape that still has GQA (2 heads, 1 KV head)."""
    base = dict(vocab_size=512, hidden=64, layers=2, heads=2, kv_heads=1, intermediate=128,
                max_len=96, d_query=32)
    base.update(overrides)
    return ReasonerConfig(**base)


def tiny_reasoner(seed: int = 0, **overrides: Any) -> Reasoner:
    return Reasoner(tiny_reasoner_config(seed=seed, **overrides), tiny_tokenizer()).eval()


def tiny_baseline(n_intents: int = 50, seed: int = 0) -> AutoIntMoE:
    return AutoIntMoE(BaselineConfig(
        cardinalities=TINY_CARDINALITIES, n_numeric=TINY_N_NUMERIC, n_intents=n_intents,
        field_dim=8, dim=16, expert_hidden=32, seed=seed,
    )).eval()


def tiny_qe_ranker(n_intents: int = 50, d_query: int = 32, text_dim: int = 64, seed: int = 0) -> QERanker:
    return QERanker(QERankerConfig(
        cardinalities=TINY_CARDINALITIES, n_numeric=TINY_N_NUMERIC, n_intents=n_intents,
        d_query=d_query, text_dim=text_dim, field_dim=16, dim=16, expert_hidden=32, seed=seed,
    )).eval()
