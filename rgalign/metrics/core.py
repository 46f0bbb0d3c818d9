"""Offline metrics of SPEC §4; the definitions here are part of the contract.

Two families:

* **Impression metrics** over the shown intents, one row per impression (shape ``(n,)``):
  :func:`auc`, :func:`gauc`, :func:`logloss`, :func:`error_rate`.
* **Ranking metrics** over *all* KB intents, one row per request (shape ``(R, N)`` for ``R``
  requests and ``N`` intents, relevant = clicked): :func:`recall_at_k`, :func:`ndcg_at_k`,
  :func:`hitrate_at_k`.

:func:`compute_all` produces the whole table row; how two rows, or two models' scores, compare
is `rgalign.metrics.compare`.

Rules a reader must not have to guess (each repeated in its function's docstring):

* **Ties in AUC / GAUC** count 1/2 (Mann-Whitney U with average ranks), as sklearn does.
* **Undefined values are NaN, not errors**: AUC of a single class, GAUC when every group has a
  single class, error rate with no clicked request, ranking metrics with no request that has a
  relevant intent. Malformed input (lengths, NaN scores, labels outside {0, 1}, empty input)
  raises :class:`MetricInputError`, a ``ValueError``.
* **Ties in a request's top shown score** (:func:`error_rate`): the first in input order wins,
  as ``np.argmax`` does.
* **Ties at the top-k boundary** (ranking metrics): the lower intent index wins, so results do
  not depend on the partition algorithm.
* **Requests without a relevant intent** are left out of the ranking metrics' mean.

Everything is vectorised: one sort (``np.lexsort``) plus ``np.bincount`` per call, no Python
loop over groups or requests: a million impressions take under a second.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from rgalign.errors import DataError

__all__ = [
    "MetricInputError",
    "auc",
    "compute_all",
    "error_rate",
    "gauc",
    "hitrate_at_k",
    "logloss",
    "ndcg_at_k",
    "recall_at_k",
]


class MetricInputError(DataError, ValueError):
    """Inputs to a metric are malformed (lengths, shapes, NaN scores, labels outside {0, 1}).

    A ``ValueError`` for callers that treat metrics as plain numerics, and a
    :class:`~rgalign.errors.DataError` so the CLI reports it as a data problem.
    """


# --------------------------------------------------------------------------------------------
# Input validation (at the boundary; the kernels below trust their arguments)
# --------------------------------------------------------------------------------------------


def _as_1d(name: str, values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise MetricInputError(
            f"{name} must be 1-D (one value per impression), got shape {arr.shape}; "
            "flatten it (e.g. `.ravel()`) if it is a column"
        )
    if arr.shape[0] == 0:
        raise MetricInputError(f"{name} is empty: a metric needs at least one impression")
    return arr


def _as_binary(name: str, values: Any, ndim: int | None = 1) -> np.ndarray:
    """Labels in {0, 1} (bool, int or float dtype) -> bool array."""
    arr = _as_1d(name, values) if ndim == 1 else np.asarray(values)
    if arr.dtype == bool:
        return arr
    if not (np.issubdtype(arr.dtype, np.number)):
        raise MetricInputError(f"{name} must be numeric or bool with values in {{0, 1}}, got dtype {arr.dtype}")
    bad = ~((arr == 0) | (arr == 1))  # NaN lands here too
    if bad.any():
        examples = np.unique(arr[bad])[:5].tolist()
        raise MetricInputError(
            f"{name} must contain only 0 and 1; found {int(bad.sum())} other value(s), e.g. {examples}"
        )
    return arr == 1


def _as_scores(name: str, values: Any, ndim: int = 1) -> np.ndarray:
    """Real-valued scores -> float64; NaN is refused (it has no place in an order), +-inf is kept
    (a masked logit is -inf and still ranks below everything else)."""
    arr = _as_1d(name, values) if ndim == 1 else np.asarray(values)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise MetricInputError(f"{name} must be real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    nan = np.isnan(arr)
    if nan.any():
        first = np.argwhere(nan)[0].tolist()
        raise MetricInputError(
            f"{name} contains {int(nan.sum())} NaN value(s) (first at index {first}); "
            "a NaN score usually means a diverged model or a bad feature"
        )
    return arr


def _same_length(**arrays: np.ndarray) -> int:
    lengths = {name: int(a.shape[0]) for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise MetricInputError(f"inputs must have the same length, got {lengths}")
    return next(iter(lengths.values()))


def _encode(name: str, values: Any) -> tuple[np.ndarray, int]:
    """Any hashable ids (str, int, ...) -> dense int codes 0..n_unique-1, by hashing (O(n))."""
    arr = _as_1d(name, values)
    try:
        codes, uniques = pd.factorize(arr, sort=False)
    except TypeError as e:
        raise MetricInputError(f"{name} must hold hashable ids: {e}") from e
    if (codes < 0).any():
        raise MetricInputError(f"{name} contains {int((codes < 0).sum())} missing id(s) (None/NaN)")
    return codes.astype(np.int64, copy=False), len(uniques)


def _as_matrix_pair(scores: Any, relevant: Any, k: int) -> tuple[np.ndarray, np.ndarray, int]:
    s = np.asarray(scores)
    if s.ndim != 2:
        raise MetricInputError(f"scores must be a (R, N) matrix (requests x intents), got shape {s.shape}")
    r = np.asarray(relevant)
    if r.shape != s.shape:
        raise MetricInputError(f"relevant must have the shape of scores {s.shape}, got {r.shape}")
    if s.size == 0:
        raise MetricInputError(f"scores is empty (shape {s.shape}): need at least one request and one intent")
    s = _as_scores("scores", s, ndim=2)
    r = _as_binary("relevant", r, ndim=2)
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
        raise MetricInputError(f"k must be a positive integer, got {k!r}")
    if k > s.shape[1]:
        raise MetricInputError(f"k={k} exceeds the number of intents N={s.shape[1]}")
    return s, r, int(k)


# --------------------------------------------------------------------------------------------
# Impression metrics
# --------------------------------------------------------------------------------------------


def _grouped_auc(labels: np.ndarray, scores: np.ndarray, codes: np.ndarray, n_groups: int):
    """Per-group Mann-Whitney AUC with average ranks in (group, score) tie blocks.

    One global sort by (group, score). Within a group, the average 1-based rank of a tie block
    occupying sorted positions [s, e) is ``(s + e - 1) / 2 - group_start + 1``.
    Returns ``(auc_per_group, n_pos, n_neg)``; ``auc`` is NaN where a group has one class.
    """
    order = np.lexsort((scores, codes))  # last key is primary: group, then score
    g = codes[order]
    s = scores[order]
    y = labels[order]
    n = g.shape[0]

    new_block = np.empty(n, dtype=bool)
    new_block[0] = True
    # `!=` rather than np.diff: inf - inf is NaN, inf != inf is False.
    new_block[1:] = (g[1:] != g[:-1]) | (s[1:] != s[:-1])
    block_starts = np.flatnonzero(new_block)
    block_ends = np.append(block_starts[1:], n)
    block_avg_pos = (block_starts + block_ends - 1) / 2.0  # 0-based global position
    block_id = np.cumsum(new_block) - 1

    size = np.bincount(g, minlength=n_groups)
    group_start = np.concatenate(([0], np.cumsum(size)[:-1]))
    rank = block_avg_pos[block_id] - group_start[g] + 1.0  # 1-based rank within the group

    n_pos = np.bincount(g, weights=y, minlength=n_groups)
    n_neg = size - n_pos
    rank_sum_pos = np.bincount(g, weights=np.where(y, rank, 0.0), minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_group = (rank_sum_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    per_group[(n_pos == 0) | (n_neg == 0)] = np.nan
    return per_group, n_pos, n_neg


def auc(labels: Any, scores: Any) -> float:
    """ROC AUC over all impressions.

    Args:
        labels: ``(n,)`` clicks in {0, 1} (bool, int or float).
        scores: ``(n,)`` real scores, higher = more likely clicked (logits or probabilities).

    Ties count 1/2: the rank-based Mann-Whitney statistic with average ranks, equal to
    ``sklearn.metrics.roc_auc_score``. Returns NaN when only one class is present (sklearn
    raises instead); raises :class:`MetricInputError` on malformed input.

    >>> auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    y = _as_binary("labels", labels)
    s = _as_scores("scores", scores)
    _same_length(labels=y, scores=s)
    per_group, _, _ = _grouped_auc(y, s, np.zeros(y.shape[0], dtype=np.int64), 1)
    return float(per_group[0])


def gauc(labels: Any, scores: Any, groups: Any) -> float:
    """Group AUC (FuxiCTR's definition): per-group AUC weighted by the group's impression count.

    Args:
        labels: ``(n,)`` clicks in {0, 1}.
        scores: ``(n,)`` real scores.
        groups: ``(n,)`` group keys (SPEC ``group_key``), any hashable values (str, int, ...).

    Groups whose impressions are all clicked or all unclicked are skipped (their AUC is
    undefined), and do not count in the weights. Ties count 1/2 as in :func:`auc`. Returns NaN
    when every group is single-class.
    """
    y = _as_binary("labels", labels)
    s = _as_scores("scores", scores)
    codes, n_groups = _encode("groups", groups)
    _same_length(labels=y, scores=s, groups=codes)
    per_group, n_pos, n_neg = _grouped_auc(y, s, codes, n_groups)
    valid = (n_pos > 0) & (n_neg > 0)
    if not valid.any():
        return float("nan")
    weight = (n_pos + n_neg)[valid]
    return float(np.sum(per_group[valid] * weight) / np.sum(weight))


def logloss(labels: Any, probs: Any, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities (natural log).

    Args:
        labels: ``(n,)`` clicks in {0, 1}.
        probs: ``(n,)`` calibrated click probabilities in [0, 1] (not logits).
        eps: probabilities are clipped to ``[eps, 1 - eps]`` so a confident miss costs
            ``-log(eps)`` (~16.1 for 1e-7, FuxiCTR's value) instead of infinity.
    """
    y = _as_binary("labels", labels)
    p = _as_scores("probs", probs)
    _same_length(labels=y, probs=p)
    if not (0.0 < eps < 0.5):
        raise MetricInputError(f"eps must be in (0, 0.5), got {eps}")
    outside = (p < 0.0) | (p > 1.0)
    if outside.any():
        raise MetricInputError(
            f"probs must be probabilities in [0, 1]; {int(outside.sum())} value(s) outside, "
            f"range [{p.min()}, {p.max()}] (pass sigmoid(logits), not logits)"
        )
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))


def error_rate(labels: Any, scores: Any, request_ids: Any) -> float:
    """Fraction of clicked requests whose top-scored *shown* intent was not clicked.

    Args:
        labels: ``(n,)`` clicks in {0, 1}, one per shown intent (impression).
        scores: ``(n,)`` real scores.
        request_ids: ``(n,)`` request of each impression, any hashable values.

    Only requests with at least one click count (1 - HitRate@1 over shown intents). When
    several shown intents of a request share the top score, the first in input order is the
    top one (as ``np.argmax``). Returns NaN when no request has a click.
    """
    y = _as_binary("labels", labels)
    s = _as_scores("scores", scores)
    codes, n_req = _encode("request_ids", request_ids)
    n = _same_length(labels=y, scores=s, request_ids=codes)
    # Sort by request, then score descending, then input position: the first row of each
    # request is its top shown intent, the earliest one among equal scores.
    order = np.lexsort((np.arange(n), -s, codes))
    r_sorted = codes[order]
    first = np.ones(n, dtype=bool)
    first[1:] = r_sorted[1:] != r_sorted[:-1]
    top_req = r_sorted[first]
    top_clicked = y[order][first]
    clicks = np.bincount(codes, weights=y, minlength=n_req)
    with_click = clicks[top_req] > 0
    if not with_click.any():
        return float("nan")
    return float(np.mean(~top_clicked[with_click]))


# --------------------------------------------------------------------------------------------
# Ranking over all KB intents
# --------------------------------------------------------------------------------------------


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """``(R, k)`` intent indices of each row's top k, best first; ties -> lower index first.

    ``np.partition`` gives each row's k-th largest score ``v``; everything above ``v`` is in,
    and the lowest-index entries equal to ``v`` fill the remaining places. So the chosen set does
    not depend on how argpartition happens to break ties.
    """
    n_rows, n_cols = scores.shape
    kth = np.partition(scores, n_cols - k, axis=1)[:, n_cols - k]
    above = scores > kth[:, None]
    equal = scores == kth[:, None]
    need = k - above.sum(axis=1)
    chosen = above | (equal & (np.cumsum(equal, axis=1) <= need[:, None]))
    idx = np.nonzero(chosen)[1].reshape(n_rows, k)  # ascending index within each row
    # stable sort on -score keeps ascending index among equal scores
    within = np.argsort(-np.take_along_axis(scores, idx, axis=1), axis=1, kind="stable")
    return np.take_along_axis(idx, within, axis=1)


def _ranking(scores: Any, relevant: Any, k: int):
    s, r, k = _as_matrix_pair(scores, relevant, k)
    n_rel = r.sum(axis=1)
    keep = n_rel > 0
    s, r, n_rel = s[keep], r[keep], n_rel[keep]
    if s.shape[0] == 0:
        return None, None, k
    top = _top_k(s, k)
    hits = np.take_along_axis(r, top, axis=1)  # (R', k) bool, best first
    return hits, n_rel, k


def recall_at_k(scores: Any, relevant: Any, k: int) -> float:
    """Mean over requests of |top-k ∩ relevant| / |relevant|.

    Args:
        scores: ``(R, N)`` scores of every KB intent for each request.
        relevant: ``(R, N)`` bool (or {0, 1}) matrix, True where the intent was clicked.
        k: cut-off, ``1 <= k <= N``.

    Requests with no relevant intent are excluded from the mean (NaN if none remains). Ties at
    the cut-off go to the lower intent index.
    """
    hits, n_rel, _ = _ranking(scores, relevant, k)
    if hits is None:
        return float("nan")
    return float(np.mean(hits.sum(axis=1) / n_rel))


def hitrate_at_k(scores: Any, relevant: Any, k: int) -> float:
    """Fraction of requests with at least one relevant intent in the top k.

    Shapes, exclusion and tie rules as in :func:`recall_at_k`.
    """
    hits, _, _ = _ranking(scores, relevant, k)
    if hits is None:
        return float("nan")
    return float(np.mean(hits.any(axis=1)))


def ndcg_at_k(scores: Any, relevant: Any, k: int) -> float:
    """Mean NDCG@k with binary gains and ``1 / log2(rank + 1)`` discounts (rank from 1).

    The ideal DCG places ``min(k, n_relevant)`` relevant intents at the top. Shapes, exclusion
    and tie rules as in :func:`recall_at_k` (ties are broken by index, not averaged as
    ``sklearn.metrics.ndcg_score`` does).
    """
    hits, n_rel, k = _ranking(scores, relevant, k)
    if hits is None:
        return float("nan")
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = hits @ discount
    ideal = np.cumsum(discount)[np.minimum(n_rel, k) - 1]
    return float(np.mean(dcg / ideal))


# --------------------------------------------------------------------------------------------
# Report rows
# --------------------------------------------------------------------------------------------


def compute_all(
    labels: Any,
    scores: Any,
    groups: Any,
    request_ids: Any,
    all_scores: Any,
    relevant: Any,
    k: int = 3,
) -> dict[str, float]:
    """Every SPEC §4 metric for one model, as one report row.

    Args:
        labels: ``(n,)`` clicks of the shown impressions.
        scores: ``(n,)`` click *probabilities* of those impressions (logloss needs [0, 1]).
        groups: ``(n,)`` GAUC group keys.
        request_ids: ``(n,)`` request of each impression (for the error rate).
        all_scores: ``(R, N)`` scores of every KB intent per request.
        relevant: ``(R, N)`` clicked-intent matrix.
        k: ranking cut-off; 3 because the product shows three intents.

    Returns keys ``auc, gauc, logloss, error_rate, recall@k, ndcg@k, hitrate@k`` (k spelled out,
    e.g. ``recall@3``).
    """
    return {
        "auc": auc(labels, scores),
        "gauc": gauc(labels, scores, groups),
        "logloss": logloss(labels, scores),
        "error_rate": error_rate(labels, scores, request_ids),
        f"recall@{k}": recall_at_k(all_scores, relevant, k),
        f"ndcg@{k}": ndcg_at_k(all_scores, relevant, k),
        f"hitrate@{k}": hitrate_at_k(all_scores, relevant, k),
    }
