"""Raw requests: the feature dicts a client sends, from a JSON / JSONL file, else the test split
of the dataset a run was trained on, else synthesised from the feature encoders (valid values,
random text from the KB's words) when the dataset is gone. The one place that knows how.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rgalign.data.encoders import FeatureEncoders
from rgalign.data.loader import load_dataset
from rgalign.data.requests import RequestArrays, build_requests
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


def dataset_requests(
    data_path: str | os.PathLike, encoders: Any = None, splits: Sequence[str] = ("test",)
) -> dict[str, RequestArrays]:
    """`RequestArrays` of each of ``splits`` of a dataset folder (encoders fitted on its training
    split when none are given): the one loader of "the dataset's requests" for quickstart,
    export gates, benchmarks and scripts."""
    ds = load_dataset(data_path)
    enc = encoders if encoders is not None else FeatureEncoders.fit(ds)
    return {split: build_requests(ds, enc, split) for split in splits}


def dataset_records(data_path: str | os.PathLike, encoders: Any = None, limit: int | None = MAX_RECORDS
                    ) -> list[dict[str, Any]]:
    """Raw requests (feature dicts, what a client sends) of the dataset's test split, its first
    ``limit`` (all with None)."""
    raw = dataset_requests(data_path, encoders)["test"].raw
    return [dict(r) for r in raw[:limit]]


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
