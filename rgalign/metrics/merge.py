"""The SPEC §4 metrics of a split held in pieces (one per rank of a sharded run), merged exactly.

Each piece is one rank's requests, whole (a request's impressions never straddle two shards).
What a piece contributes (`SplitParts`):

* per request, merged by sums and counts: error rate (clicked requests, and those whose top shown
  intent was not clicked) and the ranking metrics over all KB intents (the sums of each
  request's Recall/NDCG/HitRate@k, and the requests with a relevant intent);
* per impression, gathered: label, click probability, GAUC group and cohort bits (~18 bytes an
  impression, against ~650 of a pandas row of the log). AUC needs the global order of scores, and
  GAUC's groups are users (`group_key`), whose requests lie on several shards: a group's AUC needs
  all of its impressions in one place. Logloss and the cohort shares follow from the same columns.

`merge_parts` then `finish` give what `compute_all` (+ `cohort_gauc`) gives on the whole split,
up to float summation order; on one piece they give it bit for bit (tests/unit/test_metrics_merge.py).
Group keys travel as 64-bit hashes (`group_codes`), so they cost 8 bytes whatever their type; two
keys colliding is a ~n²/2⁶⁵ event.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from rgalign.metrics.core import (
    MetricInputError, _as_binary, _as_scores, _encode, _ranking, _same_length, auc, gauc, logloss,
)


def group_codes(groups: np.ndarray) -> np.ndarray:
    """(n,) uint64 hashes of GAUC group keys (any hashable values): the same key, the same code,
    on every rank."""
    return pd.util.hash_array(np.asarray(groups).astype(str).astype(object))


@dataclass
class SplitParts:
    """One piece's contribution; ``cohorts`` maps a cohort name to an (n,) bool mask."""

    labels: np.ndarray  # (n,) bool
    probs: np.ndarray  # (n,) float64 click probabilities
    groups: np.ndarray  # (n,) uint64, `group_codes`
    cohorts: dict[str, np.ndarray] = field(default_factory=dict)
    clicked_requests: int = 0
    wrong_top: int = 0
    ranking_sums: dict[str, float] = field(default_factory=dict)  # "recall" / "ndcg" / "hitrate"
    ranked_requests: int = 0
    k: int = 3


def _error_counts(labels: np.ndarray, scores: np.ndarray, request_ids: np.ndarray) -> tuple[int, int]:
    """(clicked requests, of which the top shown intent was not clicked): `core.error_rate`'s terms."""
    codes, n_req = _encode("request_ids", request_ids)
    n = len(labels)
    order = np.lexsort((np.arange(n), -scores, codes))
    r_sorted = codes[order]
    first = np.ones(n, dtype=bool)
    first[1:] = r_sorted[1:] != r_sorted[:-1]
    top_req, top_clicked = r_sorted[first], labels[order][first]
    with_click = np.bincount(codes, weights=labels, minlength=n_req)[top_req] > 0
    return int(with_click.sum()), int((~top_clicked[with_click]).sum())


def _ranking_sums(all_scores: np.ndarray, relevant: np.ndarray, k: int) -> tuple[dict[str, float], int]:
    hits, n_rel, k = _ranking(all_scores, relevant, k)
    if hits is None:
        return {"recall": 0.0, "ndcg": 0.0, "hitrate": 0.0}, 0
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discount)[np.minimum(n_rel, k) - 1]
    return {"recall": float(np.sum(hits.sum(axis=1) / n_rel)), "ndcg": float(np.sum((hits @ discount) / ideal)),
            "hitrate": float(np.sum(hits.any(axis=1)))}, len(n_rel)


def split_parts(labels, probs, groups, request_ids, all_scores, relevant, k: int = 3,
                cohorts: dict[str, np.ndarray] | None = None) -> SplitParts:
    """One piece's `SplitParts`, from the arguments `compute_all` takes (an empty piece is fine:
    a shard with no request of the split)."""
    y = np.asarray(labels)
    if y.size == 0:
        empty = np.zeros(0)
        return SplitParts(empty.astype(bool), empty, empty.astype(np.uint64),
                          {name: empty.astype(bool) for name in cohorts or {}}, k=k)
    y = _as_binary("labels", labels)
    p = _as_scores("probs", probs)
    _same_length(labels=y, probs=p, groups=np.asarray(groups), request_ids=np.asarray(request_ids))
    clicked, wrong = _error_counts(y, p, np.asarray(request_ids))
    sums, ranked = _ranking_sums(all_scores, relevant, k)
    masks = {name: np.asarray(m, dtype=bool) for name, m in (cohorts or {}).items()}
    return SplitParts(y, p, group_codes(groups), masks, clicked, wrong, sums, ranked, k)


def merge_parts(parts: list[SplitParts]) -> SplitParts:
    """The pieces as one (in the given order: rank order)."""
    if len(parts) == 1:
        return parts[0]
    names = list(parts[0].cohorts)
    sums = {m: sum(p.ranking_sums.get(m, 0.0) for p in parts) for m in ("recall", "ndcg", "hitrate")}
    return SplitParts(
        np.concatenate([p.labels for p in parts]), np.concatenate([p.probs for p in parts]),
        np.concatenate([p.groups for p in parts]),
        {n: np.concatenate([p.cohorts[n] for p in parts]) for n in names},
        sum(p.clicked_requests for p in parts), sum(p.wrong_top for p in parts), sums,
        sum(p.ranked_requests for p in parts), parts[0].k,
    )


def finish(parts: SplitParts) -> dict[str, float]:
    """The report row of a whole (merged) split: `compute_all`'s keys, and ``gauc_<cohort>`` /
    ``share_<cohort>`` per cohort as `cohort_gauc`'s."""
    if len(parts.labels) == 0:
        raise MetricInputError("the split has no impression on any shard: a metric needs at least one")
    y, p, g, k = parts.labels, parts.probs, parts.groups, parts.k
    nan = float("nan")
    n = parts.ranked_requests
    out = {
        "auc": auc(y, p), "gauc": gauc(y, p, g), "logloss": logloss(y, p),
        "error_rate": parts.wrong_top / parts.clicked_requests if parts.clicked_requests else nan,
        f"recall@{k}": parts.ranking_sums["recall"] / n if n else nan,
        f"ndcg@{k}": parts.ranking_sums["ndcg"] / n if n else nan,
        f"hitrate@{k}": parts.ranking_sums["hitrate"] / n if n else nan,
    }
    for name, m in parts.cohorts.items():
        out[f"gauc_{name}"] = gauc(y[m], p[m], g[m]) if m.any() else nan
        out[f"share_{name}"] = float(m.mean())
    return out
