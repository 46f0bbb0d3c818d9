"""Step 2 of the ensemble (``--backend python``): tokens -> latent query, with ONNX Runtime.

Inputs ``input_ids``, ``attention_mask`` INT64 (B, T); output ``latent_query`` FP32 (B, d). The
requests Triton's dynamic batcher hands over together (each with its own T) are left padded to
the longest (pad token, mask 0: what the tokenizer itself does in a longer batch) and run as one
ONNX Runtime call, then split back per request: that one call is what dynamic batching buys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rgalign.serve.models.common import (
    input_array,
    int_parameter,
    left_pad,
    model_parameters,
    respond_each,
    split_rows,
    version_dir,
)

Runner = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


class ReasonerStep:
    """``[(input_ids, attention_mask) per request] -> [{"latent_query": (B_i, d)}]`` in one run."""

    def __init__(self, runner: Runner, pad_token_id: int) -> None:
        self.runner = runner
        self.pad_token_id = int(pad_token_id)

    def __call__(self, inputs: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        sizes = [ids.shape[0] for ids, _ in inputs]
        ids = left_pad([np.asarray(i, np.int64) for i, _ in inputs], self.pad_token_id)
        mask = left_pad([np.asarray(m, np.int64) for _, m in inputs], 0)
        query = self.runner({"input_ids": ids, "attention_mask": mask})["latent_query"]
        return [{"latent_query": q.astype(np.float32, copy=False)} for q in split_rows(query, sizes)]


def load_runner(args: Mapping[str, str]) -> Runner:
    """ONNX Runtime on ``<version>/model.onnx``, CPU, ``threads`` from the config's parameters
    (0: ONNX Runtime's default, one per core)."""
    from rgalign.inference.runtime import OrtRunner

    threads = int_parameter(model_parameters(args), "threads", 0)
    return OrtRunner.load(version_dir(args) / "model.onnx", threads=threads or None)


class TritonPythonModel:
    """Triton's entry point (``REPO/reasoner/1/model.py`` imports it)."""

    def initialize(self, args: Mapping[str, str]) -> None:
        params = model_parameters(args)
        self.step = ReasonerStep(load_runner(args), int_parameter(params, "pad_token_id", 0))

    def execute(self, requests: list[Any]) -> list[Any]:
        return respond_each(
            requests,
            lambda r: (input_array(r, "input_ids"), input_array(r, "attention_mask")),
            self.step,
        )
