"""The synthetic generator: format, determinism, the KB, and the click model's promises."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rgalign.data.loader import load_dataset
from rgalign.data.synth import MAX_INTENTS, TOPICS, generate, select_kb, synth_frames, synthesize, tiny_dataset
from rgalign.errors import DataError

SMALL = dict(users=80, intents=60, requests=600, slate_size=6)
FILES = ("dataset.yaml", "users.parquet", "intents.parquet", "impressions.parquet", "synth.json")


def test_writes_a_loadable_dataset(tmp_path):
    out = synthesize(tmp_path / "ds", **SMALL)
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    ds = load_dataset(out)
    assert len(ds.users) == 80 and len(ds.intents) == 60
    assert len(ds.impressions) == 600 * 6 and ds.impressions["request_id"].nunique() == 600
    assert ds.schema.group_key == "user_id" and ds.schema.split.by == "ts" and ds.schema.split.test_fraction == 0.2
    assert ds.schema.context_text == ("recent_actions",)
    meta = json.loads((out / "synth.json").read_text())
    assert meta["params"] == {**SMALL, "seed": 0}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = synthesize(tmp_path / "a", seed=3, **SMALL)
    b = synthesize(tmp_path / "b", seed=3, **SMALL)
    c = synthesize(tmp_path / "c", seed=4, **SMALL)
    for f in FILES:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert (a / "impressions.parquet").read_bytes() != (c / "impressions.parquet").read_bytes()
    assert (a / "users.parquet").read_bytes() != (c / "users.parquet").read_bytes()


def test_frames_equal_for_same_seed():
    x, y = synth_frames(seed=1, **SMALL), synth_frames(seed=1, **SMALL)
    for a, b in zip(x[1:], y[1:]):
        assert a.equals(b)
    assert not x[3].equals(synth_frames(seed=2, **SMALL)[3])


def test_kb_covers_topics_with_distinct_texts():
    kb = select_kb(200)
    assert len(kb) == 200 and len({it.text for it in kb}) == 200
    assert {it.topic for it in kb} == set(range(len(TOPICS)))
    texts = {it.text for it in select_kb(MAX_INTENTS)}
    assert {"Where is my parcel?", "My parcel is delayed", "How do I return an item?"} <= texts
    assert {it.topic for it in select_kb(12)} == set(range(len(TOPICS)))  # round robin: small KBs too
    with pytest.raises(DataError, match=f"between 1 and {MAX_INTENTS}"):
        select_kb(MAX_INTENTS + 1)


def test_context_shape_and_click_rates():
    t = generate(users=300, intents=200, requests=4000, seed=0, slate_size=10)
    imp = t.impressions
    assert 0.08 <= imp["label"].mean() <= 0.2  # CTR around 10-20%
    per_req = imp["label"].reshape(-1, 10).sum(1)
    assert 0.6 <= (per_req > 0).mean() < 0.95  # most requests have a click, not all
    acts = imp["recent_actions"][::10]
    n_actions = np.array([a.count("; ") + 1 for a in acts])
    assert n_actions.min() >= 2 and n_actions.max() <= 4
    shown = imp["intent_id"].reshape(-1, 10)
    assert all(len(set(row)) == 10 for row in shown[:200])  # distinct intents per slate
    assert set(imp["last_order_status"]) >= {"shipped", "delivered", "none"}


def test_text_carries_the_need():
    """The true need's cue phrase is in recent_actions for most requests, and when it is, the
    need is clicked far more often than other shown intents: the text is informative."""
    t = generate(users=300, intents=200, requests=4000, seed=0, slate_size=10)
    kb = select_kb(200)
    acts = t.impressions["recent_actions"][::10]
    has_cue = np.array([any(c in a for c in kb[n].cues) for a, n in zip(acts, t.need)])
    assert 0.7 <= has_cue.mean() <= 0.9
    shown = np.array([int(s[1:]) for s in t.impressions["intent_id"]]).reshape(-1, 10)
    labels = t.impressions["label"].reshape(-1, 10)
    is_need = shown == t.need[:, None]
    assert labels[is_need].mean() > 5 * labels[~is_need].mean()


def test_tiny_dataset_is_validated_and_fast():
    ds = tiny_dataset()
    assert len(ds.intents) == 50 and set(ds.impressions["split"]) == {"train", "valid", "test"}


def test_refuses_to_overwrite_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(DataError, match="not empty and holds no synthetic dataset"):
        synthesize(tmp_path / "mine", **SMALL)
    out = synthesize(tmp_path / "again", **SMALL)
    synthesize(out, **SMALL)  # a previous synthetic dataset may be overwritten


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"users": 0}, "--users must be an integer >= 1"),
        ({"requests": 2}, "--requests must be an integer >= 3"),
        ({"intents": 5, "slate_size": 10}, "slate_size 10 is larger than the KB (5 intents)"),
    ],
)
def test_bad_sizes(kwargs, message):
    with pytest.raises(DataError) as e:
        generate(**{**SMALL, **kwargs})
    assert message in str(e.value)
