"""Step 2 of the ensemble (``--backend python``): tokens -> latent query, with ONNX Runtime.

Inputs ``input_ids``, ``attention_mask`` INT64 (B, T); output ``latent_query`` FP32 (B, d). The
requests Triton's dynamic batcher hands over together (each with its own T) are left padded to
the longest (pad token, mask 0: what the tokenizer itself does in a longer batch) and run as one
ONNX Runtime call, then split back per request: that one call is what dynamic batching buys.
A dynamically quantized (int8) graph runs row by row instead, its padding trimmed, so that an
answer never depends on batch mates (`rgalign.inference.batch_invariance`).

The step is callable directly (Triton exposes every model), so each request is checked before
it is batched (`check_tokens`): token ids within the vocabulary, at most ``max_len`` tokens, a
0/1 mask that attends the last (pooled) token. A bad request gets its own 400.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

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

Runner = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


def check_tokens(
    input_ids: np.ndarray | None, attention_mask: np.ndarray | None, vocab_size: int = 0, max_len: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """One request's (B, T) tokens and mask, checked; RequestError naming what is wrong.
    ``vocab_size`` / ``max_len`` 0: not checked (a repository deployed before they were recorded)."""
    if input_ids is None or attention_mask is None:
        raise RequestError("reasoner: inputs `input_ids` and `attention_mask` are both required")
    ids, mask = np.asarray(input_ids), np.asarray(attention_mask)
    if ids.ndim != 2 or ids.shape != mask.shape or ids.shape[1] == 0:
        raise RequestError(
            f"reasoner: input_ids {list(ids.shape)} and attention_mask {list(mask.shape)} must be the same (B, T), T >= 1"
        )
    if max_len and ids.shape[1] > max_len:
        raise RequestError(f"reasoner: {ids.shape[1]} tokens, over the model's limit of {max_len}")
    if vocab_size and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise RequestError(f"reasoner: token ids must be in 0..{vocab_size - 1}, got {int(ids.min())}..{int(ids.max())}")
    if not np.isin(mask, (0, 1)).all() or not (mask[:, -1] == 1).all():
        raise RequestError("reasoner: attention_mask must be 0/1 with the last token attended (left padding)")
    return ids.astype(np.int64, copy=False), mask.astype(np.int64, copy=False)


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
    (0: ONNX Runtime's default, one per core); row by row when the graph is batch dependent."""
    from rgalign.inference.batch_invariance import load_runner as load_invariant

    params = model_parameters(args)
    threads = int_parameter(params, "threads", 0)
    invariant = int_parameter(params, "batch_invariant", 1) != 0
    return load_invariant(version_dir(args) / "model.onnx", threads=threads or None, batch_invariant=invariant)


class TritonPythonModel:
    """Triton's entry point (``REPO/reasoner/1/model.py`` imports it)."""

    def initialize(self, args: Mapping[str, str]) -> None:
        params = model_parameters(args)
        self.step = ReasonerStep(load_runner(args), int_parameter(params, "pad_token_id", 0))
        self.vocab_size = int_parameter(params, "vocab_size", 0)
        self.max_len = int_parameter(params, "max_len", 0)

    def execute(self, requests: list[Any]) -> list[Any]:
        return respond_each(
            requests,
            lambda r: check_tokens(
                input_array(r, "input_ids"), input_array(r, "attention_mask"), self.vocab_size, self.max_len
            ),
            self.step,
            model="reasoner",
        )
