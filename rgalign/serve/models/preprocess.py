"""Step 1 of the ensemble: raw JSON features -> the reasoner's tokens and the ranker's features.

Input ``features``: BYTES (B, 1), one JSON object of raw user and context features per batch item.
Outputs: ``input_ids``, ``attention_mask`` INT64 (B, T) (left padded); ``cat`` INT64 (B, Fc);
``num`` FP32 (B, Fn). It is `rgalign.inference.preprocess.Preprocessor`, loaded from the export's
serving files that deploy copies into ``preprocess/1/`` at their export paths (the manifest
beside them), so ``Preprocessor.from_export(preprocess/1)`` reads them as it reads an export.

Each request is preprocessed on its own, as the in-process pipeline does for one call: a bad
item (malformed JSON, a missing or mistyped feature) fails its request only. An unseen
categorical value is not an error: it encodes to the out-of-vocabulary bucket.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from rgalign.errors import DataError
from rgalign.serve.models.common import RequestError, input_array, respond_each, version_dir


def decode_features(features: np.ndarray) -> list[dict[str, Any]]:
    """BYTES (B, 1) or (B,) of JSON objects -> B feature dicts; RequestError naming the item."""
    items = np.asarray(features, dtype=object).reshape(-1)
    if items.size == 0:
        raise RequestError("empty batch: `features` must hold at least one JSON object")
    records = []
    for i, raw in enumerate(items):
        try:
            text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else str(raw)
            record = json.loads(text)
        except UnicodeDecodeError as e:
            raise RequestError(f"features[{i}]: not UTF-8 text ({e.reason})") from None
        except json.JSONDecodeError as e:
            raise RequestError(
                f"features[{i}]: malformed JSON ({e.msg} at line {e.lineno} column {e.colno})"
            ) from None
        if not isinstance(record, dict):
            raise RequestError(
                f"features[{i}]: expected a JSON object of features, got {type(record).__name__}"
            )
        records.append(record)
    return records


class PreprocessStep:
    """``features`` (B, 1) BYTES -> the four tensors above, via the export's `Preprocessor`."""

    def __init__(self, preprocessor: Any) -> None:
        self.preprocessor = preprocessor

    @classmethod
    def from_dir(cls, folder: str | os.PathLike) -> PreprocessStep:
        from rgalign.inference.preprocess import Preprocessor

        return cls(Preprocessor.from_export(folder))

    def __call__(self, features: np.ndarray) -> dict[str, np.ndarray]:
        records = decode_features(features)
        try:
            batch = self.preprocessor(records)
        except DataError as e:
            raise RequestError(str(e)) from None
        except (TypeError, ValueError) as e:  # a value the tokenizer or prompt builder rejects
            raise RequestError(f"features: cannot preprocess ({type(e).__name__}: {e})") from None
        return {
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            "cat": batch.cat,
            "num": batch.num,
        }


class TritonPythonModel:
    """Triton's entry point (``REPO/preprocess/1/model.py`` imports it)."""

    def initialize(self, args: Mapping[str, str]) -> None:
        self.step = PreprocessStep.from_dir(version_dir(args))

    def execute(self, requests: list[Any]) -> list[Any]:
        return respond_each(
            requests,
            lambda r: self.step(input_array(r, "features")),
            lambda outputs: outputs,
        )
