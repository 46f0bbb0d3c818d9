"""The references a model is compared with, and the cohorts its quality is split by: item
popularity (`smoothed_like_rate`) and GAUC per cold/seen cohort (`cohort_gauc`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from rgalign.metrics.core import MetricInputError, _as_binary, _as_scores, gauc

# Pseudo-impressions of the global like rate added to every intent's counts: an intent shown
# twice and liked twice is not a sure thing. 10 is the usual "a handful of impressions" prior of
# item-popularity references; the figures move by < 0.002 GAUC between 5 and 50 on MovieLens.
POPULARITY_PRIOR = 10.0


def smoothed_like_rate(intents: Any, labels: Any, n_intents: int, prior: float = POPULARITY_PRIOR) -> np.ndarray:
    """Item popularity, the reference every recommender is compared with: per intent,
    ``(clicks + prior * p) / (shows + prior)`` over the given (training) impressions, where
    ``p`` is their overall click rate. An intent never shown gets ``p``.

    Args:
        intents: ``(n,)`` KB index (0 <= i < n_intents) of each impression.
        labels: ``(n,)`` clicks in {0, 1}.
        n_intents: KB size ``N``.

    Returns ``(N,)`` float64 probabilities.

    >>> smoothed_like_rate([0, 0, 1], [1, 1, 0], 3, prior=1.0).round(3).tolist()
    [0.889, 0.333, 0.667]
    """
    y = _as_binary("labels", labels).astype(np.float64)
    idx = np.asarray(intents)
    if idx.shape != y.shape:
        raise MetricInputError(f"intents has shape {idx.shape}, labels {y.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= n_intents):
        raise MetricInputError(f"intent indices must lie in [0, {n_intents}), got [{idx.min()}, {idx.max()}]")
    shows = np.bincount(idx, minlength=n_intents).astype(np.float64)
    clicks = np.bincount(idx, weights=y, minlength=n_intents)
    return like_rate_from_counts(shows, clicks, prior)


def like_rate_from_counts(shows: np.ndarray, clicks: np.ndarray, prior: float = POPULARITY_PRIOR) -> np.ndarray:
    """`smoothed_like_rate` from (N,) per-intent impression and click counts: what ranks of a
    sharded run add up (the counts are sums, so the result is the whole log's)."""
    shows, clicks = np.asarray(shows, dtype=np.float64), np.asarray(clicks, dtype=np.float64)
    p = float(clicks.sum() / shows.sum()) if shows.sum() else float("nan")
    return (clicks + prior * p) / (shows + prior)


def cohort_gauc(labels: Any, scores: Any, groups: Any, cohorts: Mapping[str, Any]) -> dict[str, float]:
    """GAUC over each cohort's impressions: ``{"gauc_<name>": value}`` (NaN for an empty cohort
    or one where every group has a single class), plus ``"share_<name>"``, the cohort's share of
    the impressions. ``cohorts`` maps a name (``seen_intents``, ``cold_users``, ...) to an
    ``(n,)`` boolean mask."""
    y = _as_binary("labels", labels)
    s = _as_scores("scores", scores)
    g = np.asarray(groups)
    out: dict[str, float] = {}
    for name, mask in cohorts.items():
        m = np.asarray(mask, dtype=bool)
        if m.shape != y.shape:
            raise MetricInputError(f"cohort {name!r} mask has shape {m.shape}, labels {y.shape}")
        out[f"gauc_{name}"] = gauc(y[m], s[m], g[m]) if m.any() else float("nan")
        out[f"share_{name}"] = float(m.mean())
    return out
