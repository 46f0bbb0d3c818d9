"""Step 3 of the ensemble (``--backend python``): features + latent query -> scores over the KB.

Inputs ``cat`` INT64 (B, Fc), ``num`` FP32 (B, Fn), ``query`` FP32 (B, d); outputs ``scores``
FP32 (B, N), ``topk_scores`` FP32 (B, K), ``topk_idx`` INT64 (B, K), the exported ranker's own
(the KB table is inside the graph). Requests batched together run as one ONNX Runtime call
(row by row for a batch-dependent int8 graph: `rgalign.inference.batch_invariance`).

Each request is checked first (`check_features`): categorical codes within each field's
vocabulary (0 is the out-of-vocabulary bucket), finite numbers, a finite query of width d.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rgalign.serve.models.common import (
    RequestError,
    input_array,
    model_parameters,
    respond_each,
    split_rows,
)
from rgalign.serve.models.reasoner import load_runner

Runner = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]
OUTPUTS = ("scores", "topk_scores", "topk_idx")


def check_features(
    cat: np.ndarray | None,
    num: np.ndarray | None,
    query: np.ndarray | None,
    cardinalities: Sequence[int] = (),
    d_query: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One request's ``cat`` (B, Fc), ``num`` (B, Fn), ``query`` (B, d), checked; RequestError
    naming what is wrong. Empty ``cardinalities`` / ``d_query`` 0: those checks are skipped."""
    if cat is None or num is None or query is None:
        raise RequestError("ranker: inputs `cat`, `num` and `query` are all required")
    cat, num, query = np.asarray(cat), np.asarray(num), np.asarray(query)
    b = cat.shape[0] if cat.ndim == 2 else -1
    if cat.ndim != 2 or num.ndim != 2 or query.ndim != 2 or not (num.shape[0] == query.shape[0] == b):
        raise RequestError(
            f"ranker: cat {list(cat.shape)}, num {list(num.shape)}, query {list(query.shape)} must share the batch B"
        )
    if cardinalities:
        if cat.shape[1] != len(cardinalities):
            raise RequestError(f"ranker: cat has {cat.shape[1]} fields, the model {len(cardinalities)}")
        limit = np.asarray(cardinalities, dtype=np.int64)[None, :]
        if cat.size and ((cat < 0) | (cat >= limit)).any():
            j = int(np.argwhere((cat < 0) | (cat >= limit))[0][1])
            raise RequestError(f"ranker: cat field {j} must be in 0..{cardinalities[j] - 1}")
    if d_query and query.shape[1] != d_query:
        raise RequestError(f"ranker: query must be (B, {d_query}), got {list(query.shape)}")
    if not (np.isfinite(num).all() and np.isfinite(query).all()):
        raise RequestError("ranker: num and query must be finite")
    return cat.astype(np.int64, copy=False), num.astype(np.float32, copy=False), query.astype(np.float32, copy=False)


class RankerStep:
    """``[(cat, num, query) per request] -> [{"scores", "topk_scores", "topk_idx"}]``."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def __call__(
        self, inputs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]
    ) -> list[dict[str, np.ndarray]]:
        sizes = [cat.shape[0] for cat, _, _ in inputs]
        feeds = {
            "cat": np.concatenate([np.asarray(c, np.int64) for c, _, _ in inputs]),
            "num": np.concatenate([np.asarray(n, np.float32) for _, n, _ in inputs]),
            "query": np.concatenate([np.asarray(q, np.float32) for _, _, q in inputs]),
        }
        out = self.runner(feeds)
        parts = {name: split_rows(out[name], sizes) for name in OUTPUTS}
        return [{name: parts[name][i] for name in OUTPUTS} for i in range(len(inputs))]


class TritonPythonModel:
    """Triton's entry point (``REPO/ranker/1/model.py`` imports it)."""

    def initialize(self, args: Mapping[str, str]) -> None:
        self.step = RankerStep(load_runner(args))
        params = model_parameters(args)
        cards = params.get("cardinalities", "").strip()
        self.cardinalities = tuple(int(c) for c in json.loads(cards)) if cards else ()
        self.d_query = int(params.get("d_query", "0") or 0)

    def execute(self, requests: list[Any]) -> list[Any]:
        return respond_each(
            requests,
            lambda r: check_features(
                *(input_array(r, name) for name in ("cat", "num", "query")), self.cardinalities, self.d_query
            ),
            self.step,
            model="ranker",
        )
