"""What the benchmarks feed: real raw requests, and model inputs of exact shapes built from them.

- `load_records`: raw feature dicts (what a client sends) from a JSON / JSONL file, else the
  held-out split of the dataset the run was trained on, else requests synthesised from the
  feature encoders (valid values, random text from the KB's words) when the dataset is gone.
- `reasoner_feeds(pre, records, batch, seq)`: (batch, seq) prompts of *exactly* ``seq`` real
  tokens each, no padding (a prompt's own tokens; one too short is extended on the left with
  the tokens of the next prompts), so "64 tokens" means 64 tokens of attention and MLP work.
- `ranker_feeds`: the encoded features of ``batch`` requests and unit latent queries.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rgalign.errors import ConfigError

# raw requests kept for the benchmarks: more than the largest batch, so batches differ
MAX_RECORDS = 256


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """A JSON list of feature objects, or JSON Lines (one object per line)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--records {p}: no such file")
    text = p.read_text(encoding="utf-8").strip()
    try:
        data = json.loads(text) if text.startswith("[") else [json.loads(line) for line in text.splitlines() if line]
    except json.JSONDecodeError as e:
        raise ConfigError(f"--records {p}: not JSON or JSON Lines ({e})") from None
    if not data or not all(isinstance(r, dict) for r in data):
        raise ConfigError(f"--records {p}: expected a non-empty list of JSON objects (raw features)")
    return data[:MAX_RECORDS]


def dataset_records(data_path: str | os.PathLike, encoders: Any, limit: int = MAX_RECORDS) -> list[dict[str, Any]]:
    """Raw requests of the dataset's test split (its first ``limit``)."""
    from rgalign.data.loader import load_dataset
    from rgalign.data.requests import build_requests

    ra = build_requests(load_dataset(data_path), encoders, "test")
    return [dict(r) for r in ra.raw[:limit]]


def synthetic_records(encoders: Any, n: int = MAX_RECORDS, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` valid requests drawn from the encoders alone: categorical values from each vocab,
    numbers around each field's mean, text fields from the KB's intent words (seeded)."""
    rng = np.random.default_rng(seed)
    words = sorted({w.lower().strip("?.,") for t in encoders.intent_texts for w in t.split()}) or ["help"]
    out = []
    for _ in range(n):
        rec: dict[str, Any] = {}
        for f in encoders.categorical_fields:
            rec[f] = str(rng.choice(encoders.vocabs[f]))
        for f, mean, std in zip(encoders.numeric_fields, encoders.means, encoders.stds):
            rec[f] = round(float(max(0.0, rng.normal(mean, std))), 3)
        for f in encoders.text_fields:
            rec[f] = " ".join(rng.choice(words, size=int(rng.integers(4, 12))))
        # the encoders' field order (user then context) is the order clients send
        order = [f for f in encoders.user_fields + encoders.context_fields if f in rec]
        out.append({f: rec[f] for f in order + [f for f in rec if f not in order]})
    return out


def records_for(encoders: Any, data_path: str | os.PathLike | None, records_file: str | os.PathLike | None
                ) -> tuple[list[dict[str, Any]], str]:
    """(records, where they came from): ``records_file``, else the dataset, else synthetic."""
    if records_file is not None:
        return read_records(records_file), f"file {os.fspath(records_file)}"
    if data_path is not None and Path(data_path).is_dir():
        try:
            recs = dataset_records(data_path, encoders)
            if recs:
                return recs, f"test split of {os.fspath(data_path)}"
        except Exception as e:  # noqa: BLE001 - a changed dataset: fall back, and say so
            return synthetic_records(encoders), f"synthetic (dataset {os.fspath(data_path)} unreadable: {e})"
    return synthetic_records(encoders), "synthetic (the run's dataset is not on this machine)"


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
