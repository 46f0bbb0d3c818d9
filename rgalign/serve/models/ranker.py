"""Step 3 of the ensemble (``--backend python``): features + latent query -> scores over the KB.

Inputs ``cat`` INT64 (B, Fc), ``num`` FP32 (B, Fn), ``query`` FP32 (B, d); outputs ``scores``
FP32 (B, N), ``topk_scores`` FP32 (B, K), ``topk_idx`` INT64 (B, K), the exported ranker's own
(the KB table is inside the graph). Requests batched together run as one ONNX Runtime call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rgalign.serve.models.common import input_array, respond_each, split_rows
from rgalign.serve.models.reasoner import load_runner

Runner = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]
OUTPUTS = ("scores", "topk_scores", "topk_idx")


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

    def execute(self, requests: list[Any]) -> list[Any]:
        return respond_each(
            requests,
            lambda r: tuple(input_array(r, name) for name in ("cat", "num", "query")),
            self.step,
        )
