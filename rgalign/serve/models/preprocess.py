"""Step 1 of the ensemble: raw JSON features -> the reasoner's tokens and the ranker's features.

Input ``features``: BYTES (B, 1), one JSON object of raw user and context features per batch item.
Outputs: ``input_ids``, ``attention_mask`` INT64 (B, T) (left padded); ``cat`` INT64 (B, Fc);
``num`` FP32 (B, Fn). It is `rgalign.inference.preprocess.Preprocessor`, loaded from the export's
serving files that deploy copies into ``preprocess/1/`` at their export paths (the manifest
beside them), so ``Preprocessor.from_export(preprocess/1)`` reads them as it reads an export.

Each request is preprocessed on its own, as the in-process pipeline does for one call: a bad
item (malformed JSON, a missing or mistyped feature) fails its request only. An unseen
categorical value is not an error: it encodes to the out-of-vocabulary bucket. Each item is held
to the deployment's `RequestLimits` (config parameters ``max_item_bytes``, ``max_text_chars``)
before its JSON is parsed and before its prompt is tokenized (`rgalign.inference.limits`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from rgalign.errors import DataError
from rgalign.inference.limits import RequestLimits, check_record, decode_item, one_line
from rgalign.serve.models.common import (
    RequestError,
    input_array,
    model_parameters,
    respond_each,
    version_dir,
)


def decode_features(features: np.ndarray | None, limits: RequestLimits | None = None) -> list[dict[str, Any]]:
    """BYTES (B, 1) or (B,) of JSON objects -> B feature dicts; RequestError naming the item
    (sizes checked against ``limits`` before parsing)."""
    if features is None:
        raise RequestError("missing input `features`")
    items = np.asarray(features, dtype=object).reshape(-1)
    if items.size == 0:
        raise RequestError("empty batch: `features` must hold at least one JSON object")
    limits = limits or RequestLimits()
    return [decode_item(raw, i, limits) for i, raw in enumerate(items)]


class PreprocessStep:
    """``features`` (B, 1) BYTES -> the four tensors above, via the export's `Preprocessor`."""

    def __init__(self, preprocessor: Any, limits: RequestLimits | None = None) -> None:
        self.preprocessor = preprocessor
        self.limits = limits or RequestLimits()
        fields = getattr(preprocessor, "fields", None)
        self.names = tuple(fields.all_names) if fields is not None else ()
        self.categorical = (
            tuple(fields.user_categorical) + tuple(fields.context_categorical) if fields is not None else ()
        )

    @classmethod
    def from_dir(cls, folder: str | os.PathLike, limits: RequestLimits | None = None) -> PreprocessStep:
        from rgalign.inference.preprocess import Preprocessor

        return cls(Preprocessor.from_export(folder), limits)

    def __call__(self, features: np.ndarray | None) -> dict[str, np.ndarray]:
        records = decode_features(features, self.limits)
        for i, record in enumerate(records):
            check_record(record, i, self.names, self.limits, self.categorical)
        try:
            batch = self.preprocessor(records)
        except DataError as e:
            raise RequestError(str(e)) from None
        except Exception as e:  # noqa: BLE001 - any value the prompt builder or tokenizer rejects
            raise RequestError(f"features: cannot preprocess ({one_line(e)})") from None
        return {
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            "cat": batch.cat,
            "num": batch.num,
        }


class TritonPythonModel:
    """Triton's entry point (``REPO/preprocess/1/model.py`` imports it)."""

    def initialize(self, args: Mapping[str, str]) -> None:
        limits = RequestLimits.from_dict(model_parameters(args))
        self.step = PreprocessStep.from_dir(version_dir(args), limits)

    def execute(self, requests: list[Any]) -> list[Any]:
        return respond_each(
            requests,
            lambda r: self.step(input_array(r, "features")),
            lambda outputs: outputs,
            model="preprocess",
        )
