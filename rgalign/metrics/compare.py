"""How two models compare: a report row against a baseline row (:func:`relative_deltas`,
:func:`abs_deltas`; the paper reports e.g. "relative error rate -3.52%"), and two scorings of the
same impressions (:func:`gauc_difference`: the paired GAUC difference and its standard error,
what says whether one beats the other by more than the noise of the split)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from rgalign.metrics.core import MetricInputError, _as_binary, _as_scores, _encode, _grouped_auc, _same_length

__all__ = ["abs_deltas", "gauc_difference", "relative_deltas"]


def gauc_difference(labels: Any, scores_a: Any, scores_b: Any, groups: Any) -> tuple[float, float]:
    """GAUC(``scores_a``) - GAUC(``scores_b``) on the same impressions, and its standard error.

    The difference is paired: it is the impression-weighted mean of the per-group AUC
    differences (the groups are the same for both, so it equals the difference of the two
    :func:`gauc` values). Its standard error treats groups as independent draws: ``sqrt(sum
    w^2 (d - D)^2 * G / (G - 1)) / sum w`` over the ``G`` two-class groups. It says whether one
    ranking beats another on this split by more than which groups happened to be in it. Returns
    ``(nan, nan)`` when no group has both classes, ``(D, 0.0)`` with one such group.
    """
    y = _as_binary("labels", labels)
    a = _as_scores("scores_a", scores_a)
    b = _as_scores("scores_b", scores_b)
    codes, n_groups = _encode("groups", groups)
    _same_length(labels=y, scores_a=a, scores_b=b, groups=codes)
    auc_a, n_pos, n_neg = _grouped_auc(y, a, codes, n_groups)
    auc_b, _, _ = _grouped_auc(y, b, codes, n_groups)
    valid = (n_pos > 0) & (n_neg > 0)
    g = int(valid.sum())
    if g == 0:
        return float("nan"), float("nan")
    w = (n_pos + n_neg)[valid]
    d = (auc_a - auc_b)[valid]
    mean = float(np.sum(w * d) / np.sum(w))
    if g == 1:
        return mean, 0.0
    se = float(np.sqrt(np.sum(w**2 * (d - mean) ** 2) * g / (g - 1)) / np.sum(w))
    return mean, se


def _paired(metrics: Mapping[str, float], baseline: Mapping[str, float]):
    missing = [key for key in metrics if key not in baseline]
    if missing:
        raise MetricInputError(f"baseline lacks metric(s) {missing}; it has {sorted(baseline)}")
    return ((key, float(metrics[key]), float(baseline[key])) for key in metrics)


def relative_deltas(metrics: Mapping[str, float], baseline: Mapping[str, float]) -> dict[str, float]:
    """``(m - b) / |b|`` for every key of ``metrics``, as a fraction (-0.0352 = "-3.52%").

    The sign follows the metric, not "better": a lower error rate gives a negative delta.
    NaN where the baseline is 0 or either value is NaN. Every key of ``metrics`` must be in
    ``baseline``; extra baseline keys are ignored.
    """
    out = {}
    for key, m, b in _paired(metrics, baseline):
        out[key] = (m - b) / abs(b) if b != 0 and not math.isnan(b) else float("nan")
    return out


def abs_deltas(metrics: Mapping[str, float], baseline: Mapping[str, float]) -> dict[str, float]:
    """``m - b`` for every key of ``metrics`` (key rules as in :func:`relative_deltas`)."""
    return {key: m - b for key, m, b in _paired(metrics, baseline)}
