"""Helpers shared by the tests/unit/test_data_*.py files: tiny seeded frames and a writer that
lays them out as a dataset folder (parquet or CSV), so each validation test breaks one thing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from rgalign.data.schema import DatasetSchema
from rgalign.data.synth import synth_frames


def small_frames(seed: int = 0, users: int = 30, intents: int = 20, requests: int = 60, slate_size: int = 5):
    """``(schema, users, intents, impressions)`` from the synthetic generator, a few hundred rows."""
    return synth_frames(users=users, intents=intents, requests=requests, seed=seed, slate_size=slate_size)


def write_dataset(
    root: Path,
    schema: DatasetSchema | dict,
    users: pd.DataFrame,
    intents: pd.DataFrame,
    impressions: pd.DataFrame,
    fmt: str = "parquet",
) -> Path:
    """Write a dataset folder; ``schema`` may be a dict (written as YAML verbatim, even if invalid)."""
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    d = schema.to_dict() if isinstance(schema, DatasetSchema) else schema
    (root / "dataset.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
    for name, df in (("users", users), ("intents", intents), ("impressions", impressions)):
        if fmt == "parquet":
            df.to_parquet(root / f"{name}.parquet", index=False)
        else:
            df.to_csv(root / f"{name}.csv", index=False)
    return root
