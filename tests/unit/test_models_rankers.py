"""Baseline (AutoInt+MoE) and QE ranker: all-KB scoring equals per-intent scoring, top-k,
checkpoints, OOV ids, and the query's influence."""

from __future__ import annotations

import pytest
import torch

from rgalign.errors import ConfigError
from rgalign.models.baseline import AutoIntMoE, BaselineConfig
from rgalign.models.qe_ranker import QERanker, QERankerConfig
from tiny import tiny_baseline, tiny_encoded, tiny_qe_ranker, tiny_requests

N = 50
B = 6


@pytest.fixture(scope="module")
def inputs():
    cat, num = tiny_encoded(tiny_requests(B, seed=2))
    gen = torch.Generator().manual_seed(0)
    query = torch.nn.functional.normalize(torch.randn(B, 32, generator=gen), dim=-1)
    return cat, num, query


@pytest.fixture(scope="module")
def qe():
    m = tiny_qe_ranker(n_intents=N)
    m.set_intent_text_emb(torch.randn(N, 64, generator=torch.Generator().manual_seed(1)))
    return m


def _all_idx():
    return torch.arange(N).expand(B, N)


def test_baseline_score_all_equals_forward_and_topk(inputs):
    cat, num, _ = inputs
    m = tiny_baseline(n_intents=N)
    with torch.no_grad():
        s = m.score_all(cat, num)
        assert s.shape == (B, N)
        torch.testing.assert_close(s, m(cat, num, _all_idx()), rtol=0, atol=1e-5)
        idx = torch.randint(0, N, (B, 7), generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(m(cat, num, idx), s.gather(1, idx), rtol=0, atol=1e-5)
        top, top_idx = m.topk(cat, num, 5)
    torch.testing.assert_close(top, s.gather(1, top_idx))
    assert (top[:, :-1] >= top[:, 1:]).all() and torch.equal(top[:, 0], s.max(dim=1).values)


def test_qe_score_all_equals_forward_and_topk(qe, inputs):
    cat, num, query = inputs
    with torch.no_grad():
        s = qe.score_all(cat, num, query)
        assert s.shape == (B, N)
        torch.testing.assert_close(s, qe(cat, num, query, _all_idx()), rtol=0, atol=1e-5)
        idx = torch.randint(0, N, (B, 7), generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(qe(cat, num, query, idx), s.gather(1, idx), rtol=0, atol=1e-5)
        top, top_idx = qe.topk(cat, num, query, 5)
    torch.testing.assert_close(top, s.gather(1, top_idx))
    assert (top[:, :-1] >= top[:, 1:]).all() and torch.equal(top_idx[:, 0], s.argmax(dim=1))


def test_qe_scores_depend_on_query_and_intent_text(qe, inputs):
    cat, num, query = inputs
    with torch.no_grad():
        s = qe.score_all(cat, num, query)
        s2 = qe.score_all(cat, num, query.flip(0))
        # not just a per-request shift: the query changes the *ranking* of intents
        delta = s2 - s
        assert (delta.std(dim=1) > 1e-4).all()
        other = tiny_qe_ranker(n_intents=N)  # same seed, zero text table
        assert not torch.allclose(other.score_all(cat, num, query), s)


def test_oov_and_out_of_range_ids_do_not_crash(inputs, qe):
    cat, num, query = inputs
    bad = cat.clone()
    bad[0] = torch.tensor([0, 999, -5])  # OOV bucket, too large, negative
    with torch.no_grad():
        assert torch.isfinite(tiny_baseline().score_all(bad, num)).all()
        s = qe.score_all(bad, num, query)
    assert torch.isfinite(s).all()
    oov = cat.clone()
    oov[0] = torch.tensor([0, 0, 0])
    with torch.no_grad():
        torch.testing.assert_close(s[0], qe.score_all(oov, num, query)[0])


def test_seeded_init():
    a, b, c = tiny_qe_ranker(seed=1), tiny_qe_ranker(seed=1), tiny_qe_ranker(seed=2)
    state = torch.random.get_rng_state()
    tiny_baseline(seed=1)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    assert not torch.equal(a.intent_ids.emb.weight, c.intent_ids.emb.weight)


def test_save_load_round_trips(tmp_path, qe, inputs):
    cat, num, query = inputs
    base = tiny_baseline(n_intents=N, seed=4)
    base.save(tmp_path / "base")
    qe.save(tmp_path / "qe")
    assert sorted(p.name for p in (tmp_path / "qe").iterdir()) == ["model.safetensors", "ranker.json"]
    base2, qe2 = AutoIntMoE.load(tmp_path / "base"), QERanker.load(tmp_path / "qe")
    assert base2.config == base.config and qe2.config == qe.config
    assert torch.equal(qe2.intent_text_emb, qe.intent_text_emb)  # the KB text table travels
    with torch.no_grad():
        assert torch.equal(base.score_all(cat, num), base2.score_all(cat, num))
        assert torch.equal(qe.score_all(cat, num, query), qe2.score_all(cat, num, query))
    with pytest.raises(ConfigError, match="not a 'qe_ranker'"):
        QERanker.load(tmp_path / "base")
    with pytest.raises(ConfigError, match="no ranker.json"):
        AutoIntMoE.load(tmp_path)


def test_configs_round_trip_and_validate():
    c = QERankerConfig(cardinalities=(3, 4), n_numeric=1, n_intents=10)
    assert QERankerConfig.from_dict(c.to_dict()) == c
    b = BaselineConfig(cardinalities=[3, 4], n_numeric=0, n_intents=10)
    assert BaselineConfig.from_dict(b.to_dict()) == b and b.cardinalities == (3, 4)
    with pytest.raises(ConfigError, match="unknown"):
        QERankerConfig.from_dict({**c.to_dict(), "typo": 1})
    with pytest.raises(ConfigError):
        BaselineConfig(cardinalities=(), n_numeric=0, n_intents=10)
    with pytest.raises(ConfigError, match="shape"):
        tiny_qe_ranker(n_intents=N).set_intent_text_emb(torch.zeros(N, 3))


def test_qe_without_text_and_numeric_only():
    m = QERanker(QERankerConfig(cardinalities=(), n_numeric=2, n_intents=5, d_query=8, text_dim=0,
                                field_dim=8, dim=8, expert_hidden=8))
    s = m.score_all(torch.zeros(3, 0, dtype=torch.long), torch.randn(3, 2), torch.randn(3, 8))
    assert s.shape == (3, 5)


def test_training_step_lowers_listnet_loss(inputs):
    from rgalign.models.losses import ranker_loss

    cat, num, query = inputs
    m = tiny_qe_ranker(n_intents=N).train()
    idx = torch.arange(10).expand(B, 10)
    labels = torch.zeros(B, 10)
    labels[:, 3] = 1
    mask = torch.ones(B, 10)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        loss, parts = ranker_loss(m(cat, num, query, idx), labels, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(parts["listnet"])
    assert losses[-1] < losses[0]
