"""FeatureEncoders: fit on train only, OOV bucket, JSON round trip, serving-time record checks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from data_fixtures import small_frames

from rgalign.data.encoders import FeatureEncoders
from rgalign.data.loader import Dataset
from rgalign.errors import DataError


@pytest.fixture(scope="module")
def dataset():
    s, u, i, m = small_frames()
    # The last request (in time, so in test) gets a new user from a region nobody else is in,
    # and an entry page no other request has: values that exist only in the test split.
    u = pd.concat([u, u.iloc[[0]].assign(user_id="u_new", region="ATLANTIS")], ignore_index=True)
    m = m.copy()
    last = m["request_id"] == m["request_id"].iloc[-1]
    m.loc[last, "entry_page"] = "test_only_page"
    m.loc[last, "user_id"] = "u_new"
    return Dataset.from_frames(s, u, i, m)


@pytest.fixture(scope="module")
def enc(dataset):
    return FeatureEncoders.fit(dataset)


def test_fields_and_cardinalities(dataset, enc):
    s = dataset.schema
    assert enc.categorical_fields == list(s.categorical)
    assert enc.numeric_fields == list(s.numeric)
    assert enc.text_fields == list(s.text)
    assert enc.features == list(s.features)
    assert enc.cardinalities == [len(enc.vocabs[f]) + 1 for f in enc.categorical_fields]
    assert enc.intent_ids == dataset.intent_ids
    assert enc.intent_index([dataset.intent_ids[3], dataset.intent_ids[0]]).tolist() == [3, 0]


def test_fit_uses_train_only(dataset, enc):
    train = dataset.request_table("train")
    assert "test_only_page" not in enc.vocabs["entry_page"]
    assert "ATLANTIS" not in enc.vocabs["region"]
    assert set(enc.vocabs["entry_page"]) == set(train["entry_page"])
    assert enc.means[enc.numeric_fields.index("hour")] == pytest.approx(train["hour"].mean())
    assert enc.stds[enc.numeric_fields.index("hour")] == pytest.approx(train["hour"].std(ddof=0))
    test = dataset.request_table("test")
    cat, num = enc.encode_frame(test)
    j = enc.categorical_fields.index("entry_page")
    assert cat[test["entry_page"].to_numpy() == "test_only_page", j].tolist() == [0]  # OOV bucket
    assert cat[test["region"].to_numpy() == "ATLANTIS", enc.categorical_fields.index("region")].tolist() == [0]
    assert cat.dtype == np.int64 and num.dtype == np.float32
    assert cat.shape == (len(test), len(enc.categorical_fields)) and num.shape == (len(test), len(enc.numeric_fields))
    assert (cat >= 0).all() and (cat < np.array(enc.cardinalities)).all()


def test_train_values_never_oov_and_standardised(dataset, enc):
    train = dataset.request_table("train")
    cat, num = enc.encode_frame(train)
    assert (cat > 0).all()
    assert np.allclose(num.mean(0), 0, atol=1e-5) and np.allclose(num.std(0), 1, atol=1e-4)


def test_json_round_trip_identical(tmp_path, dataset, enc):
    path = tmp_path / "encoders.json"
    enc.to_json(path)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temp file
    back = FeatureEncoders.from_json(path)
    assert back == enc and back.to_dict() == enc.to_dict()
    frame = dataset.request_table("valid")
    for a, b in zip(enc.encode_frame(frame), back.encode_frame(frame)):
        assert np.array_equal(a, b)
    assert FeatureEncoders.from_dict(json.loads(path.read_text())) == enc


def test_encode_records_matches_encode_frame(dataset, enc):
    frame = dataset.request_table("test").head(7)
    records = frame[list(dataset.schema.features)].to_dict("records")
    for a, b in zip(enc.encode_frame(frame), enc.encode_records(records)):
        assert np.array_equal(a, b)


def test_encode_records_unseen_and_numbers(enc):
    rec = {"gender": "F", "tier": "never-seen", "region": 7, "age": 31, "orders_90d": 2.5,
           "entry_page": "home", "last_order_status": "shipped", "hour": 20, "days_since_last_order": 6,
           "recent_actions": "checked the tracking page twice", "extra": "ignored"}
    cat, num = enc.encode_records([rec])
    assert cat[0, enc.categorical_fields.index("tier")] == 0
    assert cat[0, enc.categorical_fields.index("region")] == 0  # "7" unseen
    assert cat[0, enc.categorical_fields.index("gender")] == enc.vocabs["gender"].index("F") + 1
    j = enc.numeric_fields.index("age")
    assert num[0, j] == pytest.approx((31 - enc.means[j]) / enc.stds[j], rel=1e-6)


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"age": "31"}, "features[1]: feature 'age' must be a number, got str '31'"),
        ({"age": True}, "features[1]: feature 'age' must be a number, got bool True"),
        ({"age": float("nan")}, "features[1]: feature 'age' must be a finite number"),
        ({"tier": None}, "features[1]: feature 'tier' must be a string or a number (categorical), got null"),
        ({"tier": ["gold"]}, "features[1]: feature 'tier' must be a string or a number (categorical), got list"),
        ({"recent_actions": 3}, "features[1]: feature 'recent_actions' must be a string (text), got int"),
        ({"hour": None}, "features[1]: feature 'hour' must be a number, got null None"),
    ],
)
def test_encode_records_errors(enc, patch, message):
    good = {"gender": "F", "tier": "gold", "region": "SG", "age": 31, "orders_90d": 2,
            "entry_page": "home", "last_order_status": "shipped", "hour": 20, "days_since_last_order": 6,
            "recent_actions": "x"}
    with pytest.raises(DataError) as e:
        enc.encode_records([good, {**good, **patch}])
    assert str(e.value) == message or str(e.value).startswith(message)


def test_encode_records_missing_feature_and_not_a_dict(enc):
    with pytest.raises(DataError, match=r"^features\[0\]: missing feature 'gender'$"):
        enc.encode_records([{"tier": "gold"}])
    with pytest.raises(DataError, match=r"features\[0\]: expected a JSON object of features, got str"):
        enc.encode_records(["{}"])
    # Without the text check, a record without text is fine (e.g. the baseline ranker).
    rec = {"gender": "F", "tier": "gold", "region": "SG", "age": 31, "orders_90d": 2,
           "entry_page": "home", "last_order_status": "shipped", "hour": 20, "days_since_last_order": 6}
    enc.encode_records([rec], check_text=False)


def test_constant_numeric_does_not_divide_by_zero(dataset):
    s, u, i, m = small_frames()
    m = m.assign(hour=5)
    enc = FeatureEncoders.fit(Dataset.from_frames(s, u, i, m))
    j = enc.numeric_fields.index("hour")
    assert enc.stds[j] == 1.0
    _, num = enc.encode_frame(pd.DataFrame({**{f: ["F"] for f in enc.categorical_fields},
                                            **{f: [5.0] for f in enc.numeric_fields}}).assign(hour=[9]))
    assert num[0, j] == pytest.approx(4.0)


def test_unknown_intent_and_bad_file(tmp_path, enc):
    with pytest.raises(DataError, match="unknown intent id 'nope' .item 1."):
        enc.intent_index([enc.intent_ids[0], "nope"])
    with pytest.raises(DataError, match="missing feature encoders file"):
        FeatureEncoders.from_json(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(DataError, match="expected format 'rgalign.feature_encoders/1'"):
        FeatureEncoders.from_json(tmp_path / "bad.json")


def test_encode_frame_missing_column(enc):
    with pytest.raises(DataError, match="encode: missing column 'gender'"):
        enc.encode_frame(pd.DataFrame({"age": [1]}))
