"""The fused layout (``rgalign deploy --layout fused``): the whole pipeline in one python model.

Input ``features`` BYTES (B, 1), one JSON object of raw features per item, and optional
``top_k`` INT32 (B, 1); outputs ``intent_ids`` BYTES (B, k) and ``scores`` FP32 (B, k): the
ensemble's contract. Inside, the in-process `rgalign.export.Pipeline` (its ONNX Runtime runners
loaded from ``<version>/`` laid out as an export), so one request costs one stub round trip
instead of the ensemble's four, and no tensor crosses shared memory between steps.

Per Triton batch (the requests the dynamic batcher hands over together):

    each request: check sizes, decode JSON, check top_k, preprocess  (a bad one gets its error)
    all good requests: left-pad tokens to the longest, one reasoner call, one ranker call
    each request: postprocess with its own k

The pieces are the ensemble's (`PreprocessStep` with the deployment's `RequestLimits`, `left_pad`,
`PostprocessStep`, `respond_each`'s per-request isolation), so both layouts answer the same and
reject the same requests the same way; the runners are the Pipeline's, batch invariant.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rgalign.inference.limits import RequestLimits
from rgalign.serve.models.common import (
    RequestError,
    input_array,
    int_parameter,
    left_pad,
    model_parameters,
    respond_each,
    split_rows,
    version_dir,
)
from rgalign.serve.models.postprocess import PostprocessStep
from rgalign.serve.models.preprocess import PreprocessStep

# One request read: its preprocessed tensors and its k.
Item = tuple[dict[str, np.ndarray], int]


class FusedStep:
    """``[(features (B_i, 1), top_k (B_i, 1) | None) per request] -> [{"intent_ids", "scores"}]``
    through ``pipeline`` (an `rgalign.export.Pipeline`): preprocessing per request, the two
    graphs once for the whole batch, postprocessing per request."""

    def __init__(self, pipeline: Any, default_k: int, limits: RequestLimits | None = None) -> None:
        self.pipeline = pipeline
        self.preprocess = PreprocessStep(pipeline.preprocessor, limits)
        self.postprocess = PostprocessStep(pipeline.intent_ids, default_k)
        self.pad_token_id = int(pipeline.preprocessor.tokenizer.pad_token_id)

    @classmethod
    def from_dir(cls, folder: str | os.PathLike, precision: str, threads: int, default_k: int,
                 limits: RequestLimits | None = None, batch_invariant: bool = True) -> FusedStep:
        """The Pipeline of the export laid out in ``folder``. Its runners are batch invariant
        (`rgalign.inference.batch_invariance`) unless ``batch_invariant`` is False (always
        batched, like the ensemble's ``batch_invariant=0``)."""
        from rgalign.inference.pipeline import Pipeline

        pipeline = Pipeline.from_export(folder, precision, threads=threads or None)
        if not batch_invariant:
            from rgalign.artifacts.manifest import artifact_path, read_manifest
            from rgalign.inference.batch_invariance import load_runner

            manifest = read_manifest(folder)
            pipeline.reasoner, pipeline.ranker = (
                load_runner(artifact_path(folder, manifest, m, precision), threads=threads or None, batch_invariant=False)
                for m in ("reasoner", "ranker")
            )
        return cls(pipeline, default_k, limits)

    def read(self, features: np.ndarray | None, top_k: np.ndarray | None) -> Item:
        """One request -> its model inputs and k; RequestError for a request it cannot serve."""
        if features is None:  # Triton checks required inputs; a direct caller may not
            raise RequestError("the request has no `features` input")
        k = self.postprocess.read_k(top_k)  # before the costlier preprocessing
        return self.preprocess(features), k

    def __call__(self, items: Sequence[Item]) -> list[dict[str, np.ndarray]]:
        sizes = [inputs["cat"].shape[0] for inputs, _ in items]
        ids = left_pad([inputs["input_ids"] for inputs, _ in items], self.pad_token_id)
        mask = left_pad([inputs["attention_mask"] for inputs, _ in items], 0)
        cat = np.concatenate([inputs["cat"] for inputs, _ in items])
        num = np.concatenate([inputs["num"] for inputs, _ in items])
        query = self.pipeline.reason(ids, mask)
        ranked = self.pipeline.rank(cat, num, query)
        parts = {name: split_rows(ranked[name], sizes) for name in ("topk_scores", "topk_idx", "scores")}
        return [
            self.postprocess(parts["topk_scores"][i], parts["topk_idx"][i], parts["scores"][i], k)
            for i, (_, k) in enumerate(items)
        ]


class TritonPythonModel:
    """Triton's entry point (``REPO/rgalign/1/model.py`` imports it in the fused layout)."""

    def initialize(self, args: Mapping[str, str]) -> None:
        params = model_parameters(args)
        self.step = FusedStep.from_dir(
            version_dir(args),
            precision=params.get("precision", "fp32"),
            threads=int_parameter(params, "threads", 0),
            default_k=int_parameter(params, "default_top_k", 3),
            limits=RequestLimits.from_dict(params),
            batch_invariant=int_parameter(params, "batch_invariant", 1) != 0,
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        return respond_each(
            requests,
            lambda r: self.step.read(input_array(r, "features"), input_array(r, "top_k")),
            self.step,
            model="rgalign",
        )
