"""rgalign.metrics against sklearn and against brute-force loops (the loops are the definitions
of SPEC §4 written the slow, obvious way)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import log_loss, ndcg_score, roc_auc_score

from rgalign import metrics as M
from rgalign.errors import DataError

SEEDS = [0, 1, 2, 3, 4]


def _tied_scores(rng: np.random.Generator, n: int, levels: int = 5) -> np.ndarray:
    """Scores on few distinct values, so ties are everywhere."""
    return np.round(rng.random(n) * (levels - 1)) / (levels - 1)


# ---------------------------------------------------------------- brute-force references


def _brute_gauc(labels, scores, groups) -> float:
    num = den = 0.0
    groups = np.asarray(groups)
    for g in dict.fromkeys(groups.tolist()):  # insertion order, any hashable
        mask = groups == g
        y = labels[mask]
        if y.min() == y.max():
            continue
        num += roc_auc_score(y, scores[mask]) * mask.sum()
        den += mask.sum()
    return num / den if den else float("nan")


def _brute_error_rate(labels, scores, request_ids) -> float:
    errors = []
    for r in dict.fromkeys(request_ids):
        idx = [i for i, x in enumerate(request_ids) if x == r]
        y = labels[idx]
        if y.sum() == 0:
            continue
        top = idx[int(np.argmax(scores[idx]))]  # argmax: first of equal scores
        errors.append(labels[top] == 0)
    return float(np.mean(errors)) if errors else float("nan")


def _brute_topk(row: np.ndarray, k: int) -> list[int]:
    return sorted(range(len(row)), key=lambda j: (-row[j], j))[:k]


def _brute_ranking(scores, relevant, k):
    recalls, ndcgs, hits = [], [], []
    for row, rel in zip(scores, relevant):
        n_rel = int(rel.sum())
        if n_rel == 0:
            continue
        top = _brute_topk(row, k)
        got = [bool(rel[j]) for j in top]
        recalls.append(sum(got) / n_rel)
        hits.append(float(any(got)))
        dcg = sum(g / math.log2(i + 2) for i, g in enumerate(got))
        idcg = sum(1 / math.log2(i + 2) for i in range(min(k, n_rel)))
        ndcgs.append(dcg / idcg)
    if not recalls:
        return float("nan"), float("nan"), float("nan")
    return float(np.mean(recalls)), float(np.mean(ndcgs)), float(np.mean(hits))


# ---------------------------------------------------------------- hand-computed examples


def test_auc_hand_example():
    # sklearn's documented example: pairs (pos, neg) = (.35,.1) (.35,.4) (.8,.1) (.8,.4) -> 3/4
    assert M.auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # every positive above every negative
    assert M.auc([0, 1, 0, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(1.0)


def test_auc_ties_count_half():
    # one positive, one negative, same score: the pair counts 1/2
    assert M.auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    # pos {0.5, 0.9}, neg {0.5, 0.1}: pairs (0.5,0.5)=.5, (0.5,0.1)=1, (0.9,*)=1+1 -> 3.5/4
    assert M.auc([1, 1, 0, 0], [0.5, 0.9, 0.5, 0.1]) == pytest.approx(0.875)


def test_auc_single_class_is_nan():
    assert math.isnan(M.auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(M.auc([0, 0], [0.1, 0.2]))


def test_auc_accepts_bool_float_labels_and_infinite_scores():
    assert M.auc(np.array([False, False, True, True]), [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert M.auc(np.array([0.0, 1.0]), [-np.inf, np.inf]) == 1.0
    assert M.auc([0, 1, 1], [-np.inf, -np.inf, 0.0]) == pytest.approx(0.75)


def test_gauc_hand_example():
    # group a: AUC 0.75 over 4 impressions; group b: AUC 0 over 2; group c single-class, skipped
    labels = [0, 0, 1, 1, 1, 0, 1, 1]
    scores = [0.1, 0.4, 0.35, 0.8, 0.2, 0.9, 0.5, 0.6]
    groups = ["a", "a", "a", "a", "b", "b", "c", "c"]
    assert M.gauc(labels, scores, groups) == pytest.approx((0.75 * 4 + 0.0 * 2) / 6)


def test_gauc_difference_is_paired_with_a_hand_computed_standard_error():
    # groups a (4 impressions) and b (2): AUCs 0.75 / 0.0 under scores_a, 1.0 / 1.0 under scores_b;
    # group c is single-class and skipped by both
    labels = [0, 0, 1, 1, 1, 0, 1, 1]
    a = [0.1, 0.4, 0.35, 0.8, 0.2, 0.9, 0.5, 0.6]
    b = [0.1, 0.2, 0.3, 0.4, 0.9, 0.2, 0.5, 0.6]
    groups = ["a", "a", "a", "a", "b", "b", "c", "c"]
    d, se = M.gauc_difference(labels, a, b, groups)
    assert d == pytest.approx(M.gauc(labels, a, groups) - M.gauc(labels, b, groups))
    # per-group differences -0.25 (w 4) and -1.0 (w 2): mean -0.5; se = sqrt(sum w^2 (d - D)^2 * 2 / 1) / 6
    assert d == pytest.approx((4 * -0.25 + 2 * -1.0) / 6)
    assert se == pytest.approx(math.sqrt((16 * 0.25**2 + 4 * 0.5**2) * 2) / 6)
    assert M.gauc_difference(labels, a, a, groups) == (0.0, 0.0)  # a ranking against itself
    assert M.gauc_difference([0, 1], [0.1, 0.2], [0.2, 0.1], ["g", "g"]) == (1.0, 0.0)  # one group: no spread
    assert all(math.isnan(x) for x in M.gauc_difference([1, 1], [0.1, 0.2], [0.2, 0.1], ["g", "g"]))
    with pytest.raises(M.MetricInputError):
        M.gauc_difference(labels, a, b[:-1], groups)


def test_gauc_all_single_class_is_nan():
    assert math.isnan(M.gauc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4], [1, 1, 2, 2]))


def test_error_rate_hand_example():
    labels = [0, 1, 0, 1, 0, 0, 1, 0]
    scores = [0.9, 0.5, 0.3, 0.8, 0.1, 0.7, 0.7, 0.2]
    reqs = ["r1", "r1", "r2", "r2", "r3", "r4", "r4", "r4"]
    # r1: top 0.9 unclicked -> error; r2: top 0.8 clicked -> ok; r3: no click -> excluded;
    # r4: tie at 0.7, first in input order (unclicked) wins -> error
    assert M.error_rate(labels, scores, reqs) == pytest.approx(2 / 3)


def test_error_rate_no_clicks_is_nan():
    assert math.isnan(M.error_rate([0, 0, 0], [0.1, 0.2, 0.3], [1, 1, 2]))


def test_ranking_hand_example():
    scores = np.array([[0.9, 0.1, 0.5, 0.5], [0.2, 0.3, 0.1, 0.0], [0.1, 0.2, 0.3, 0.4]])
    relevant = np.array([[0, 0, 0, 1], [1, 0, 1, 0], [0, 0, 0, 0]], dtype=bool)
    # row 0: top2 = [0, 2] (tie 0.5 between 2 and 3 -> lower index 2): no hit
    # row 1: top2 = [1, 0]: one of two relevant, at rank 2; row 2: no relevant -> excluded
    assert M.recall_at_k(scores, relevant, 2) == pytest.approx((0 + 0.5) / 2)
    assert M.hitrate_at_k(scores, relevant, 2) == pytest.approx(0.5)
    ndcg_row1 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert M.ndcg_at_k(scores, relevant, 2) == pytest.approx(ndcg_row1 / 2)
    # k = 3 takes intent 3 too, at rank 3, and ideal DCG uses min(k, 1) = 1 relevant
    assert M.ndcg_at_k(scores[:1], relevant[:1], 3) == pytest.approx(1 / math.log2(4))


def test_ranking_no_relevant_is_nan():
    scores = np.random.default_rng(0).random((3, 5))
    relevant = np.zeros((3, 5), dtype=bool)
    for fn in (M.recall_at_k, M.ndcg_at_k, M.hitrate_at_k):
        assert math.isnan(fn(scores, relevant, 2))


def test_logloss_hand_example_and_clip():
    assert M.logloss([1, 0], [0.8, 0.4]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    assert M.logloss([1], [0.0]) == pytest.approx(-math.log(1e-7))


# ---------------------------------------------------------------- random, against references


@pytest.mark.parametrize("seed", SEEDS)
def test_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 2000))
    labels = rng.integers(0, 2, n)
    scores = _tied_scores(rng, n, levels=int(rng.integers(2, 8)))
    assert M.auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_gauc_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 600
    labels = rng.integers(0, 2, n)
    # skewed click rate inside some groups so single-class groups occur
    groups = rng.choice([f"u{i}" for i in range(60)], n)
    labels[np.isin(groups, ["u1", "u2", "u3"])] = 1
    labels[np.isin(groups, ["u4", "u5"])] = 0
    scores = _tied_scores(rng, n, levels=4)
    assert M.gauc(labels, scores, groups) == pytest.approx(_brute_gauc(labels, scores, groups), abs=1e-12)
    int_groups = rng.integers(0, 40, n)
    assert M.gauc(labels, scores, int_groups) == pytest.approx(
        _brute_gauc(labels, scores, list(int_groups)), abs=1e-12
    )


def test_gauc_single_group_equals_auc():
    rng = np.random.default_rng(7)
    labels, scores = rng.integers(0, 2, 300), _tied_scores(rng, 300)
    assert M.gauc(labels, scores, np.zeros(300)) == pytest.approx(M.auc(labels, scores), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_error_rate_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 800
    request_ids = rng.integers(0, 200, n)  # some requests have a single impression
    labels = (rng.random(n) < 0.25).astype(int)  # many requests without a click
    scores = _tied_scores(rng, n, levels=3)  # frequent ties at the top
    got = M.error_rate(labels, scores, request_ids)
    assert got == pytest.approx(_brute_error_rate(labels, scores, list(request_ids)), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [1, 3, 10])
def test_ranking_matches_brute_force_with_ties(seed, k):
    rng = np.random.default_rng(seed)
    r, n = 120, 25
    scores = _tied_scores(rng, r * n, levels=4).reshape(r, n)
    relevant = rng.random((r, n)) < 0.08  # some rows have no relevant intent
    assert (relevant.sum(axis=1) == 0).any()
    want = _brute_ranking(scores, relevant, k)
    got = (M.recall_at_k(scores, relevant, k), M.ndcg_at_k(scores, relevant, k), M.hitrate_at_k(scores, relevant, k))
    assert got == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [1, 3, 10])
def test_ndcg_matches_sklearn_without_ties(seed, k):
    rng = np.random.default_rng(seed)
    scores = rng.random((80, 30))  # continuous: no ties, where sklearn's tie averaging agrees
    relevant = rng.random((80, 30)) < 0.1
    keep = relevant.any(axis=1)
    want = ndcg_score(relevant[keep].astype(float), scores[keep], k=k)
    assert M.ndcg_at_k(scores, relevant, k) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_logloss_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 500)
    probs = rng.random(500)
    probs[:5] = [0.0, 1.0, 0.0, 1.0, 0.5]  # clip matters
    want = log_loss(labels, np.clip(probs, 1e-7, 1 - 1e-7), labels=[0, 1])
    assert M.logloss(labels, probs) == pytest.approx(want, rel=1e-12)


# ---------------------------------------------------------------- report rows


def test_compute_all_keys_and_values():
    rng = np.random.default_rng(3)
    n = 300
    labels, probs = rng.integers(0, 2, n), rng.random(n)
    groups, reqs = rng.integers(0, 20, n), rng.integers(0, 60, n)
    all_scores, relevant = rng.random((40, 12)), rng.random((40, 12)) < 0.2
    row = M.compute_all(labels, probs, groups, reqs, all_scores, relevant, k=3)
    assert list(row) == ["auc", "gauc", "logloss", "error_rate", "recall@3", "ndcg@3", "hitrate@3"]
    assert row["auc"] == M.auc(labels, probs)
    assert row["ndcg@3"] == M.ndcg_at_k(all_scores, relevant, 3)
    assert all(isinstance(v, float) for v in row.values())
    assert "recall@5" in M.compute_all(labels, probs, groups, reqs, all_scores, relevant, k=5)


def test_deltas():
    base = {"auc": 0.80, "error_rate": 0.2841, "logloss": 0.0}
    new = {"auc": 0.82, "error_rate": 0.2741, "logloss": 0.1}
    rel = M.relative_deltas(new, base)
    assert rel["auc"] == pytest.approx(0.025)
    assert rel["error_rate"] == pytest.approx(-0.01 / 0.2841)  # negative = fewer errors
    assert math.isnan(rel["logloss"])  # zero baseline
    assert M.relative_deltas({"x": -1.0}, {"x": -2.0})["x"] == pytest.approx(0.5)  # |b|
    assert M.abs_deltas(new, base)["auc"] == pytest.approx(0.02)
    with pytest.raises(ValueError, match="baseline lacks"):
        M.relative_deltas({"gauc": 0.7}, base)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: M.auc([0, 1, 1], [0.1, 0.2]), "same length"),
        (lambda: M.auc([0, 1], [0.1, np.nan]), "NaN"),
        (lambda: M.auc([0, 2], [0.1, 0.2]), "only 0 and 1"),
        (lambda: M.auc([0, np.nan], [0.1, 0.2]), "only 0 and 1"),
        (lambda: M.auc(["a", "b"], [0.1, 0.2]), "numeric or bool"),
        (lambda: M.auc([], []), "empty"),
        (lambda: M.auc([[0, 1]], [[0.1, 0.2]]), "1-D"),
        (lambda: M.gauc([0, 1], [0.1, 0.2], [1, 2, 3]), "same length"),
        (lambda: M.gauc([0, 1], [0.1, 0.2], ["a", None]), "missing id"),
        (lambda: M.logloss([0, 1], [0.1, 1.5]), r"\[0, 1\]"),
        (lambda: M.logloss([0, 1], [0.1, np.nan]), "NaN"),
        (lambda: M.error_rate([0, 1], [0.1, 0.2], [1]), "same length"),
        (lambda: M.error_rate([0, -1], [0.1, 0.2], [1, 1]), "only 0 and 1"),
        (lambda: M.recall_at_k(np.zeros((2, 3)), np.zeros((2, 4), bool), 1), "shape"),
        (lambda: M.recall_at_k(np.zeros(3), np.zeros(3, bool), 1), r"\(R, N\)"),
        (lambda: M.ndcg_at_k(np.full((2, 3), np.nan), np.ones((2, 3), bool), 1), "NaN"),
        (lambda: M.hitrate_at_k(np.zeros((2, 3)), np.full((2, 3), 2), 1), "only 0 and 1"),
        (lambda: M.hitrate_at_k(np.zeros((2, 3)), np.ones((2, 3), bool), 0), "positive integer"),
        (lambda: M.hitrate_at_k(np.zeros((2, 3)), np.ones((2, 3), bool), 4), "exceeds"),
    ],
)
def test_validation_errors(call, match):
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert isinstance(info.value, DataError)
