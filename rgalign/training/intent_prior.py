"""The QE ranker's intent prior: item popularity smoothed toward what the intent's *text* predicts.

Item popularity (`rgalign.metrics.smoothed_like_rate`) shrinks every intent's like rate toward
the overall rate ``p`` with ``prior`` pseudo-impressions: a rarely shown intent scores near ``p``
whatever it is, and an intent never shown scores exactly ``p``. The QE ranker reads the intents'
text, so its prior can do better (empirical Bayes with a text regression as the prior mean):

    m_n   = sigmoid(x_n . beta)        x_n: the intent's text embedding (and a constant 1);
                                       beta: ridge regression of the intents' logit like rate on
                                       x_n, weighted by their training impressions
    r_n   = (clicks_n + prior * m_n) / (shows_n + prior)

so a rare or cold intent starts from what similar texts earned. Whether the text predicts the
like rate at all is the data's to say: the ridge strength is chosen by K-fold cross-validation
over the shown intents (held-out binomial log-likelihood per impression), and the plain overall
rate is one of the candidates; when it wins, ``m_n = p`` and the prior is item popularity exactly.
The baseline never gets this prior: it sees no text (SPEC §3).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rgalign.metrics.reference import POPULARITY_PRIOR

RIDGE_GRID = (1.0, 10.0, 100.0, 1000.0, 10000.0)  # a decade apart: the CV picks the order of magnitude
FOLDS = 5
MIN_INTENTS = 20  # fewer shown intents than this: no regression worth cross-validating


def _logit(x: np.ndarray) -> np.ndarray:
    return np.log(x / (1.0 - x))


def _ridge(x: np.ndarray, t: np.ndarray, w: np.ndarray, lam: float) -> np.ndarray:
    """Weighted ridge (intercept unpenalised): argmin sum w (x b - t)^2 + lam |b[:-1]|^2."""
    xw = x * w[:, None]
    a = xw.T @ x
    a[np.diag_indices(x.shape[1] - 1)] += lam
    return np.linalg.solve(a, xw.T @ t)


def _loglik(m: np.ndarray, clicks: np.ndarray, shows: np.ndarray) -> float:
    m = np.clip(m, 1e-6, 1 - 1e-6)
    return float((clicks * np.log(m) + (shows - clicks) * np.log(1 - m)).sum())


def text_smoothed_like_rate(
    intents: Any, labels: Any, n_intents: int, text_emb: np.ndarray, prior: float = POPULARITY_PRIOR, seed: int = 0
) -> tuple[np.ndarray, dict[str, Any]]:
    """(N,) like rates smoothed toward the text regression's prediction, and what was chosen.

    intents (n,) KB indices and labels (n,) {0, 1} of the training impressions; text_emb (N, H).
    Returns (rates (N,) float64, info: ``ridge`` (the chosen strength, None = the overall rate),
    ``cv_loglik_per_impression`` per candidate, ``intents_fit``).
    """
    idx = np.asarray(intents)
    y = np.asarray(labels, dtype=np.float64)
    shows = np.bincount(idx, minlength=n_intents).astype(np.float64)
    clicks = np.bincount(idx, weights=y, minlength=n_intents)
    return text_smoothed_rate_from_counts(shows, clicks, text_emb, prior=prior, seed=seed)


def text_smoothed_rate_from_counts(
    shows: np.ndarray, clicks: np.ndarray, text_emb: np.ndarray, prior: float = POPULARITY_PRIOR, seed: int = 0
) -> tuple[np.ndarray, dict[str, Any]]:
    """`text_smoothed_like_rate` from each intent's training impressions ``shows`` (N,) and likes
    ``clicks`` (N,): counts, so a log read by shard sums its ranks' counts and fits the same prior."""
    shows = np.asarray(shows, dtype=np.float64)
    clicks = np.asarray(clicks, dtype=np.float64)
    n_intents = len(shows)
    total_shows = float(shows.sum())
    p = float(clicks.sum()) / total_shows if total_shows else 0.5
    seen = np.flatnonzero(shows > 0)
    info: dict[str, Any] = {"ridge": None, "intents_fit": int(len(seen)), "cv_loglik_per_impression": {}}
    mean = np.full(n_intents, p)
    if len(seen) >= MIN_INTENTS and 0.0 < p < 1.0:
        x = np.hstack([np.asarray(text_emb, dtype=np.float64), np.ones((n_intents, 1))])
        target = _logit((clicks + 1.0) / (shows + 2.0))  # add-one: finite for 0 or all likes
        folds = np.random.default_rng(seed).permutation(len(seen)) % FOLDS
        scores = {"overall_rate": 0.0, **{str(lam): 0.0 for lam in RIDGE_GRID}}
        for f in range(FOLDS):
            fit, held = seen[folds != f], seen[folds == f]
            scores["overall_rate"] += _loglik(np.full(len(held), clicks[fit].sum() / shows[fit].sum()),
                                              clicks[held], shows[held])
            for lam in RIDGE_GRID:
                beta = _ridge(x[fit], target[fit], shows[fit], lam)
                scores[str(lam)] += _loglik(1 / (1 + np.exp(-(x[held] @ beta))), clicks[held], shows[held])
        total = shows[seen].sum()
        info["cv_loglik_per_impression"] = {k: v / total for k, v in scores.items()}
        best = max(scores, key=scores.get)
        if best != "overall_rate":
            lam = float(best)
            beta = _ridge(x[seen], target[seen], shows[seen], lam)
            mean = 1 / (1 + np.exp(-(x @ beta)))
            info["ridge"] = lam
    return (clicks + prior * mean) / (shows + prior), info
