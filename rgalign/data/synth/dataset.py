"""The synthetic dataset as the rest of rgalign reads it: a folder in the SPEC §1 format
(`synthesize`), DataFrames (`synth_frames`) or a validated in-memory `Dataset` (`tiny_dataset`)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from rgalign.data.schema import DatasetSchema, SplitSpec, atomic_write
from rgalign.data.synth.draw import SynthParams, generate
from rgalign.errors import DataError

GENERATOR = "rgalign.data.synth/1"
# the shared test fixture's size (`tiny_dataset`): a 50-intent KB, 400 requests, built in ~0.1 s
TINY = SynthParams(users=60, intents=50, requests=400, seed=0, slate_size=8)

SCHEMA = DatasetSchema(
    name="synthetic-shopee-chatbot",
    user_categorical=("gender", "tier", "region"),
    user_numeric=("age", "orders_90d"),
    context_categorical=("entry_page", "last_order_status"),
    context_numeric=("hour", "days_since_last_order"),
    context_text=("recent_actions",),
    group_key="user_id",
    split=SplitSpec(by="ts", test_fraction=0.2, valid_fraction=0.1),
)



def _arrow(cols: dict[str, np.ndarray]):
    from rgalign.data.loader import require_pyarrow

    pa = require_pyarrow("writing parquet")

    return pa.table({k: pa.array(v, type=pa.string()) if v.dtype == object else pa.array(v) for k, v in cols.items()})


def synth_frames(**params: int):
    """``(schema, users, intents, impressions)`` DataFrames, in memory (same draws as :func:`synthesize`);
    ``params``: `SynthParams` fields."""
    import pandas as pd

    t = generate(**params)
    frames = [pd.DataFrame(t.users), pd.DataFrame(t.intents), pd.DataFrame(t.impressions)]
    for f in frames:  # object columns of str -> the string dtype load_dataset gives
        for c in f.columns:
            if f[c].dtype == object:
                f[c] = f[c].astype(str)
    return (SCHEMA, *frames)


def tiny_dataset(**params: int):
    """A small validated :class:`~rgalign.data.loader.Dataset`, built in memory in ~0.1 s: the shared
    fixture for tests of models, training and export (a 50-intent KB). ``params``: `SynthParams`
    fields, over `TINY`."""
    from rgalign.data.loader import Dataset

    schema, u, i, m = synth_frames(**{**TINY.to_dict(), **params})
    return Dataset.from_frames(schema, u, i, m)


def synthesize(out_dir: str | Path, **params: int) -> Path:
    """Write a synthetic dataset folder (SPEC §1) drawn from `SynthParams` ``params`` and return its path.

    ``out_dir`` must be empty, missing, or a previous synthetic dataset (it holds ``synth.json``):
    the generator never overwrites someone's real data. Each file is written atomically.
    """
    from rgalign.data.loader import require_pyarrow

    pq = require_pyarrow("rgalign data synth (it writes parquet)").parquet
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "synth.json").is_file():
        raise DataError(f"{out}: folder is not empty and holds no synthetic dataset (no synth.json); choose an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    spec = SynthParams(**params)
    t = generate(**spec.to_dict())
    for name, cols in (("users", t.users), ("intents", t.intents), ("impressions", t.impressions)):
        path = out / f"{name}.parquet"
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.", suffix=".tmp")
        os.close(fd)
        try:
            # zstd: ~2x smaller than snappy on these repetitive columns, and as fast to read.
            pq.write_table(_arrow(cols), tmp, compression="zstd")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    SCHEMA.to_yaml(out / "dataset.yaml")
    meta = {
        "generator": GENERATOR,
        "params": spec.to_dict(),
        "summary": t.summary,
    }
    atomic_write(out / "synth.json", (json.dumps(meta, indent=1) + "\n").encode("utf-8"))
    return out
