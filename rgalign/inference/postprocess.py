"""Top-k indices and scores -> one `Ranked` answer (KB intent ids, best first) per request."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from rgalign.errors import ExportError


class Ranked(NamedTuple):
    """One request's answer: KB intent ids and their scores (logits), best first."""

    intent_ids: list[str]
    scores: list[float]


def postprocess(
    intent_ids: Sequence[str],
    topk_scores: np.ndarray,
    topk_idx: np.ndarray,
    k: int,
    scores: np.ndarray | None = None,
) -> list[Ranked]:
    """Top-``k`` (B, K) indices and scores -> one `Ranked` per row.

    When ``k`` exceeds the graph's K, the full ``scores`` (B, N) are ranked here instead (ties
    to the lower KB index, as `rgalign.metrics` breaks them).
    """
    if k < 1:
        raise ExportError(f"k must be >= 1, got {k}")
    if k > topk_idx.shape[1]:
        if scores is None:
            raise ExportError(f"k={k} is more than the {topk_idx.shape[1]} intents the graph ranks")
        k = min(k, scores.shape[1])
        topk_idx = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        topk_scores = np.take_along_axis(scores, topk_idx, axis=1)
    return [
        Ranked([intent_ids[int(j)] for j in row_idx[:k]], [float(s) for s in row_scores[:k]])
        for row_idx, row_scores in zip(topk_idx, topk_scores)
    ]
