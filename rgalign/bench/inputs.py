"""What the benchmarks feed: real raw requests, and model inputs of exact shapes built from them.

- raw feature dicts come from `rgalign.inference.records` (`records_for`).
- `reasoner_feeds(pre, records, batch, seq)`: (batch, seq) prompts of *exactly* ``seq`` real
  tokens each, no padding (a prompt's own tokens; one too short is extended on the left with
  the tokens of the next prompts), so "64 tokens" means 64 tokens of attention and MLP work.
- `ranker_feeds`: the encoded features of ``batch`` requests and unit latent queries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def take(records: Sequence[Mapping[str, Any]], batch: int, offset: int = 0) -> list[Mapping[str, Any]]:
    """``batch`` records from ``offset`` on, cycling when there are fewer."""
    n = len(records)
    return [records[(offset + i) % n] for i in range(batch)]


def reasoner_feeds(pre: Any, records: Sequence[Mapping[str, Any]], batch: int, seq: int) -> dict[str, np.ndarray]:
    """``input_ids`` and ``attention_mask`` (batch, seq) int64, every row exactly ``seq`` real
    tokens of real prompts (see the module docstring); ``pre`` is a `Preprocessor`."""
    prompts = pre.prompts(take(records, batch + 8))  # spares to extend short prompts from
    toks = [list(pre.tokenizer(p, add_special_tokens=True)["input_ids"]) for p in prompts]
    rows = []
    for i in range(batch):
        row = list(toks[i])
        j = i + 1
        while len(row) < seq:  # too short: earlier "context" from the following prompts
            row = list(toks[j % len(toks)]) + row
            j += 1
        rows.append(row[-seq:])  # keep the end, where the query marker is (as serving truncates)
    ids = np.asarray(rows, dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def ranker_feeds(pre: Any, records: Sequence[Mapping[str, Any]], batch: int, d_query: int,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """``cat`` (B, Fc), ``num`` (B, Fn) of real requests, ``query`` (B, d) random unit vectors
    (the ranker's cost does not depend on the query's values)."""
    cat, num = pre.encoders.encode_records(take(records, batch))
    q = np.random.default_rng(seed).standard_normal((batch, d_query)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return {"cat": cat.astype(np.int64), "num": num.astype(np.float32), "query": q}
