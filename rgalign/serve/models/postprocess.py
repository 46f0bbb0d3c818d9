"""Step 4 of the ensemble: the ranker's top-K indices -> KB intent ids, best first.

Inputs ``topk_scores`` FP32 (B, K), ``topk_idx`` INT64 (B, K), ``all_scores`` FP32 (B, N), and the
request's optional ``top_k`` INT32 (B, 1); outputs ``intent_ids`` BYTES (B, k) and ``scores``
FP32 (B, k). It is `rgalign.inference.postprocess.postprocess`: a ``top_k`` above the graph's K ranks
the full scores, as the in-process pipeline does. ``top_k`` absent: the deployment's default
(the export's ``serving.topk``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rgalign.inference.postprocess import postprocess
from rgalign.io import read_json
from rgalign.serve.models.common import (
    RequestError,
    input_array,
    int_parameter,
    model_parameters,
    respond_each,
    version_dir,
)


class PostprocessStep:
    """Top-K of the ranker -> ``intent_ids`` (B, k) and ``scores`` (B, k) for one request."""

    def __init__(self, intent_ids: Sequence[str], default_k: int) -> None:
        self.intent_ids = list(intent_ids)
        if not 1 <= default_k <= len(self.intent_ids):
            raise ValueError(f"default top_k {default_k} is not in 1..{len(self.intent_ids)}")
        self.default_k = int(default_k)

    @classmethod
    def from_dir(cls, folder: str | os.PathLike, default_k: int) -> PostprocessStep:
        return cls(read_json(os.path.join(folder, "intents.json"))["intent_ids"], default_k)

    def read_k(self, top_k: np.ndarray | None) -> int:
        """The request's k: ``top_k`` (one value per batch item, all equal) or the default."""
        if top_k is None:
            return self.default_k
        values = np.asarray(top_k).reshape(-1)
        if values.size == 0:
            return self.default_k
        if (values != values[0]).any():
            raise RequestError(
                f"top_k must be the same for every item of a request, got {sorted(set(values.tolist()))}"
            )
        k = int(values[0])
        if not 1 <= k <= len(self.intent_ids):
            raise RequestError(f"top_k must be in 1..{len(self.intent_ids)} (the KB's intents), got {k}")
        return k

    def check(
        self, topk_scores: np.ndarray | None, topk_idx: np.ndarray | None, all_scores: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One request's ranker outputs, checked (the step is callable directly): (B, K) scores and
        indices within the KB, (B, N) scores over the whole KB; RequestError otherwise."""
        if topk_scores is None or topk_idx is None or all_scores is None:
            raise RequestError("postprocess: inputs `topk_scores`, `topk_idx` and `all_scores` are all required")
        ts, ti, sc = np.asarray(topk_scores), np.asarray(topk_idx), np.asarray(all_scores)
        n = len(self.intent_ids)
        if ts.ndim != 2 or ti.shape != ts.shape or sc.ndim != 2 or sc.shape[0] != ts.shape[0] or sc.shape[1] != n:
            raise RequestError(
                f"postprocess: topk_scores {list(ts.shape)}, topk_idx {list(ti.shape)} must be (B, K) "
                f"and all_scores {list(sc.shape)} (B, {n})"
            )
        if ti.size and (int(ti.min()) < 0 or int(ti.max()) >= n):
            raise RequestError(f"postprocess: topk_idx must be in 0..{n - 1}")
        return ts, ti, sc

    def __call__(
        self, topk_scores: np.ndarray, topk_idx: np.ndarray, all_scores: np.ndarray, k: int
    ) -> dict[str, np.ndarray]:
        ranked = postprocess(self.intent_ids, topk_scores, topk_idx, k, all_scores)
        ids = np.array([[i.encode("utf-8") for i in r.intent_ids] for r in ranked], dtype=object)
        scores = np.array([r.scores for r in ranked], dtype=np.float32)
        return {"intent_ids": ids.reshape(len(ranked), -1), "scores": scores.reshape(len(ranked), -1)}


class TritonPythonModel:
    """Triton's entry point (``REPO/postprocess/1/model.py`` imports it)."""

    def initialize(self, args: Mapping[str, str]) -> None:
        default_k = int_parameter(model_parameters(args), "default_top_k", 3)
        self.step = PostprocessStep.from_dir(version_dir(args), default_k)

    def _read(self, request: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        k = self.step.read_k(input_array(request, "top_k"))
        names = ("topk_scores", "topk_idx", "all_scores")
        return (*self.step.check(*(input_array(request, n) for n in names)), k)

    def execute(self, requests: list[Any]) -> list[Any]:
        return respond_each(
            requests, self._read, lambda items: [self.step(*item) for item in items], model="postprocess"
        )
