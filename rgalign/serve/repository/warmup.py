"""Warm-up requests of a deployed model: a valid raw record built from the encoders, and the
files in Triton's raw tensor layout that a model config's ``model_warmup`` reads at load time."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rgalign.serve.repository import config as tc


def sample_record(encoders: Any) -> dict[str, Any]:
    """A valid raw request built from the encoders (first vocabulary value, mean, empty text):
    what the warm-up requests send."""
    record: dict[str, Any] = {}
    for f in encoders.categorical_fields:
        record[f] = encoders.vocabs[f][0] if encoders.vocabs[f] else ""
    for f, mean in zip(encoders.numeric_fields, encoders.means):
        record[f] = float(mean)
    for f in encoders.text_fields:
        record[f] = ""
    return record


def serialize_bytes(items: list[bytes]) -> bytes:
    """Triton's raw layout of a BYTES tensor (warm-up files): per element a 4-byte little-endian
    length, then its bytes."""
    return b"".join(len(b).to_bytes(4, "little") + b for b in items)


def warmup_files(model_dir: Path, arrays: Mapping[str, np.ndarray]) -> list[Any]:
    """One warm-up sample (batch 1, run twice: the first call allocates ORT's buffers) fed from
    files in ``model_dir/warmup/`` holding ``arrays`` (each (1, ...)) in Triton's raw layout."""
    folder = model_dir / "warmup"
    folder.mkdir(parents=True, exist_ok=True)
    inputs = {}
    for name, array in arrays.items():
        if array.dtype == object:
            (folder / name).write_bytes(serialize_bytes(list(array.reshape(-1))))
            dtype = "BYTES"
        else:
            (folder / name).write_bytes(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes())
            dtype = str(array.dtype)
        inputs[name] = tc.WarmupInput(dtype, tuple(array.shape[1:]), data=name)
    return [tc.model_warmup("sample", inputs, batch_size=1, count=2)]
