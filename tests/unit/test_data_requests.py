"""build_requests: one row per request, slates padded with -1, raw feature dicts, groups."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rgalign.data.encoders import FeatureEncoders
from rgalign.data.loader import Dataset
from rgalign.data.requests import RequestArrays, build_requests
from rgalign.data.schema import DatasetSchema, SplitSpec
from rgalign.data.synth import tiny_dataset
from rgalign.errors import DataError

SCHEMA = DatasetSchema(
    name="hand",
    user_categorical=("tier",),
    user_numeric=("age",),
    context_categorical=("page",),
    context_numeric=("hour",),
    context_text=("actions",),
    split=SplitSpec(by="column"),
)


@pytest.fixture(scope="module")
def hand():
    users = pd.DataFrame({"user_id": ["u1", "u2"], "tier": ["gold", "silver"], "age": [30, 41]})
    intents = pd.DataFrame({"intent_id": ["a", "b", "c", "d"], "text": ["A?", "B?", "C?", "D?"]})
    rows = [  # request r1 is interleaved with r2 in the file: slots follow each request's own order
        ("r1", "u1", "c", 1, 100, "home", 3, "viewed x", "train"),
        ("r2", "u2", "d", 1, 50, "me", 22, "searched 'y'", "train"),
        ("r1", "u1", "a", 0, 101, "home", 3, "viewed x", "train"),
        ("r1", "u1", "b", 0, 100, "home", 3, "viewed x", "train"),
        ("r3", "u2", "a", 0, 200, "home", 1, "", "valid"),
        ("r3", "u2", "b", 1, 200, "home", 1, "", "valid"),
        ("r4", "u1", "c", 0, 300, "wallet", 9, "z", "test"),
    ]
    imp = pd.DataFrame(rows, columns=["request_id", "user_id", "intent_id", "label", "ts", "page", "hour", "actions", "split"])
    ds = Dataset.from_frames(SCHEMA, users, intents, imp)
    return ds, FeatureEncoders.fit(ds)


def test_shapes_padding_and_order(hand):
    ds, enc = hand
    ra = build_requests(ds, enc, "train")
    assert isinstance(ra, RequestArrays) and len(ra) == 2 and ra.slate_size == 3
    assert ra.request_ids.tolist() == ["r1", "r2"]  # order of first appearance
    assert ra.user_ids.tolist() == ["u1", "u2"]
    assert ra.ts.tolist() == [100, 50] and ra.ts.dtype == np.int64  # a request's earliest ts
    assert ra.shown.tolist() == [[2, 0, 1], [3, -1, -1]] and ra.shown.dtype == np.int64
    assert ra.labels.tolist() == [[1, 0, 0], [1, 0, 0]] and ra.labels.dtype == np.float32
    assert ra.mask.tolist() == [[True, True, True], [True, False, False]]
    assert ra.cat.shape == (2, 2) and ra.cat.dtype == np.int64
    assert ra.num.shape == (2, 2) and ra.num.dtype == np.float32
    assert ra.groups.tolist() == ["u1", "u2"]


def test_raw_dicts_are_verbatim_and_json_ready(hand):
    ds, enc = hand
    ra = build_requests(ds, enc, "train")
    assert ra.raw[0] == {"tier": "gold", "age": 30, "page": "home", "hour": 3, "actions": "viewed x"}
    assert list(ra.raw[1]) == list(SCHEMA.features)
    assert type(ra.raw[1]["age"]) is int and type(ra.raw[1]["actions"]) is str
    # The raw dicts are what serving receives: encoding them gives the same arrays.
    cat, num = enc.encode_records(ra.raw)
    assert np.array_equal(cat, ra.cat) and np.array_equal(num, ra.num)


def test_other_splits_and_oov(hand):
    ds, enc = hand
    valid = build_requests(ds, enc, "valid")
    assert valid.shown.tolist() == [[0, 1]] and valid.labels.tolist() == [[0, 1]]
    test = build_requests(ds, enc, "test")
    assert test.cat[0, enc.categorical_fields.index("page")] == 0  # "wallet" only in test


def test_unknown_split(hand):
    ds, enc = hand
    with pytest.raises(DataError, match="unknown split 'dev'"):
        build_requests(ds, enc, "dev")


def test_subset(hand):
    ds, enc = hand
    ra = build_requests(ds, enc, "train")
    sub = ra.subset([1])
    assert len(sub) == 1 and sub.request_ids.tolist() == ["r2"] and sub.raw == [ra.raw[1]]
    assert sub.shown.shape == (1, 3)
    assert ra.subset(np.array([False, True])).request_ids.tolist() == ["r2"]
    assert ra.subset(slice(0, 1)).request_ids.tolist() == ["r1"]


def test_group_key_variants(hand):
    ds, _ = hand
    for gk, expected in (("request_id", ["r1", "r2"]), ("tier", ["gold", "silver"])):
        sch = DatasetSchema(**{**SCHEMA.__dict__, "group_key": gk})
        d2 = Dataset.from_frames(sch, ds.users, ds.intents, ds.impressions)
        assert build_requests(d2, FeatureEncoders.fit(d2), "train").groups.tolist() == expected


def test_on_synthetic_data():
    ds = tiny_dataset()
    enc = FeatureEncoders.fit(ds)
    total = 0
    for split in ("train", "valid", "test"):
        ra = build_requests(ds, enc, split)
        n_imp = len(ds.split_impressions(split))
        assert ra.mask.sum() == n_imp and ra.labels.sum() == ds.split_impressions(split)["label"].sum()
        assert ((ra.shown >= 0) == ra.mask).all() and (ra.labels[~ra.mask] == 0).all()
        assert ra.shown.max() < len(enc.intent_ids)
        total += len(ra)
    assert total == ds.impressions["request_id"].nunique()
