"""load_dataset: parquet and CSV, dtypes, and each validation error as one line naming file,
column and first offending row."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from data_fixtures import small_frames, write_dataset

from rgalign.data.loader import Dataset, load_dataset
from rgalign.data.schema import DatasetSchema, SplitSpec
from rgalign.errors import DataError


@pytest.fixture(scope="module")
def frames():
    return small_frames()


def _load_broken(tmp_path, frames, fmt="parquet", schema=None, users=None, intents=None, impressions=None):
    s, u, i, m = frames
    root = write_dataset(
        tmp_path / "ds", schema if schema is not None else s,
        u if users is None else users, i if intents is None else intents, m if impressions is None else impressions, fmt,
    )
    with pytest.raises(DataError) as e:
        load_dataset(root)
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# ----------------------------------------------------------------- happy paths
@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_loads_with_normalised_dtypes(tmp_path, frames, fmt):
    s, u, i, m = frames
    ds = load_dataset(write_dataset(tmp_path / fmt, s, u, i, m, fmt))
    assert isinstance(ds, Dataset) and ds.schema == s
    assert ds.sources == {t: f"{t}.{fmt}" for t in ("users", "intents", "impressions")}
    imp = ds.impressions
    assert imp["label"].dtype == np.int8 and imp["ts"].dtype == np.int64
    for c in ("request_id", "user_id", "intent_id", "entry_page", "recent_actions", "split"):
        assert pd.api.types.is_string_dtype(imp[c]), c
    assert imp["hour"].dtype == np.int64  # integers stay integers (prompts say 14, not 14.0)
    assert set(imp["split"]) == {"train", "valid", "test"}
    assert ds.intent_ids == i["intent_id"].tolist()  # KB order = file order
    assert ds.intent_texts == i["text"].tolist()
    assert len(imp) == len(m)


def test_csv_and_parquet_load_identically(tmp_path, frames):
    s, u, i, m = frames
    a = load_dataset(write_dataset(tmp_path / "p", s, u, i, m, "parquet"))
    b = load_dataset(write_dataset(tmp_path / "c", s, u, i, m, "csv"))
    for t in ("users", "intents", "impressions"):
        pd.testing.assert_frame_equal(getattr(a, t), getattr(b, t), check_dtype=False)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_integer_ids_are_read_as_strings(tmp_path, frames, fmt):
    s, u, i, m = frames

    def num(col):  # "u000012" -> 12
        return col.str[1:].astype(int)

    u2 = u.assign(user_id=num(u["user_id"]))
    i2 = i.assign(intent_id=num(i["intent_id"]))
    m2 = m.assign(user_id=num(m["user_id"]), intent_id=num(m["intent_id"]), request_id=num(m["request_id"]))
    ds = load_dataset(write_dataset(tmp_path / "ds", s, u2, i2, m2, fmt))
    assert ds.intent_ids[:3] == ["0", "1", "2"]
    assert ds.users["user_id"].iloc[12] == "12"
    assert pd.api.types.is_string_dtype(ds.impressions["request_id"])
    assert ds.impressions["request_id"].iloc[0] == str(m2["request_id"].iloc[0])


def test_csv_keeps_na_like_strings_but_not_in_numbers(tmp_path, frames):
    s, u, i, m = frames
    u2 = u.assign(region=["NA"] * len(u))  # a region code, not a missing value
    ds = load_dataset(write_dataset(tmp_path / "ds", s, u2, i, m, "csv"))
    assert set(ds.users["region"]) == {"NA"}


def test_parquet_preferred_over_csv(tmp_path, frames):
    s, u, i, m = frames
    root = write_dataset(tmp_path / "ds", s, u, i, m, "parquet")
    (root / "users.csv").write_text("garbage\n")
    assert load_dataset(root).sources["users"] == "users.parquet"


def test_describe_counts(tmp_path, frames):
    s, u, i, m = frames
    info = load_dataset(write_dataset(tmp_path / "ds", s, u, i, m)).describe()
    assert info["splits"]["all"]["impressions"] == len(m)
    assert info["splits"]["all"]["requests"] == m["request_id"].nunique()
    assert sum(info["splits"][k]["requests"] for k in ("train", "valid", "test")) == info["splits"]["all"]["requests"]
    assert info["splits"]["all"]["clicks"] == int(m["label"].sum())
    assert info["intents"] == len(i) and info["users"] == len(u)


def test_from_frames_does_not_modify_inputs(frames):
    s, u, i, m = frames
    before = m.copy()
    Dataset.from_frames(s, u, i, m)
    pd.testing.assert_frame_equal(m, before)


def test_request_table(frames):
    s, u, i, m = frames
    ds = Dataset.from_frames(s, u, i, m)
    t = ds.request_table("test")
    assert list(t.columns) == ["request_id", "user_id", "ts", *s.user_features, *s.context_features]
    assert t["request_id"].is_unique
    assert set(t["request_id"]) == set(ds.split_impressions("test")["request_id"])
    row = t.iloc[0]
    assert row["tier"] == u.set_index("user_id").loc[row["user_id"], "tier"]


# ----------------------------------------------------------------- each error, one line
def test_missing_table_says_what_was_tried(tmp_path, frames):
    s, u, i, m = frames
    root = write_dataset(tmp_path / "ds", s, u, i, m)
    (root / "impressions.parquet").unlink()
    with pytest.raises(DataError, match="missing impressions table: tried impressions.parquet, impressions.csv"):
        load_dataset(root)


def test_missing_yaml_and_folder(tmp_path, frames):
    s, u, i, m = frames
    root = write_dataset(tmp_path / "ds", s, u, i, m)
    (root / "dataset.yaml").unlink()
    with pytest.raises(DataError, match="dataset.yaml: missing file"):
        load_dataset(root)
    with pytest.raises(DataError, match="not a dataset folder"):
        load_dataset(tmp_path / "nope")


def test_missing_column(tmp_path, frames):
    msg = _load_broken(tmp_path, frames, users=frames[1].drop(columns=["tier"]))
    assert msg.startswith("users.parquet: missing column 'tier' (declared in dataset.yaml user_features.categorical)")
    msg = _load_broken(tmp_path, frames, impressions=frames[3].drop(columns=["label"]))
    assert msg.startswith("impressions.parquet: missing column 'label'")


def test_feature_declared_twice(tmp_path, frames):
    d = frames[0].to_dict()
    d["context_features"]["numeric"].append("age")
    msg = _load_broken(tmp_path, frames, schema=d)
    assert "feature 'age' is declared twice (user_features.numeric and context_features.numeric)" in msg


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_label_not_binary(tmp_path, frames, fmt):
    m = frames[3].copy()
    m.loc[17, "label"] = 2
    msg = _load_broken(tmp_path, frames, fmt, impressions=m)
    expected = f"impressions.{fmt}: column 'label' row 17" + (" (line 19)" if fmt == "csv" else "") + ": value 2 is not 0/1"
    assert msg == expected


def test_nan_in_numeric_user_and_context_feature(tmp_path, frames):
    u = frames[1].astype({"age": float})
    u.loc[4, "age"] = np.nan
    assert _load_broken(tmp_path, frames, users=u) == (
        "users.parquet: column 'age' row 4: NaN in numeric feature; fill or drop it before loading"
    )
    m = frames[3].astype({"hour": float})
    m.loc[9, "hour"] = np.nan
    assert _load_broken(tmp_path, frames, impressions=m).startswith(
        "impressions.parquet: column 'hour' row 9: NaN in numeric feature"
    )


def test_non_number_in_numeric_csv(tmp_path, frames):
    u = frames[1].astype({"age": object})
    u.loc[3, "age"] = "abc"
    assert _load_broken(tmp_path, frames, "csv", users=u).startswith(
        "users.csv: column 'age' row 3 (line 5): value 'abc' is not a number"
    )


def test_unknown_user_and_intent(tmp_path, frames):
    m = frames[3].copy()
    m.loc[3, "user_id"] = "ghost"
    assert _load_broken(tmp_path, frames, impressions=m) == (
        "impressions.parquet: column 'user_id' row 3: unknown user 'ghost' (not in users.parquet)"
    )
    m = frames[3].copy()
    m.loc[8, "intent_id"] = "i9999"
    assert _load_broken(tmp_path, frames, impressions=m) == (
        "impressions.parquet: column 'intent_id' row 8: unknown intent 'i9999' (not in intents.parquet)"
    )


def test_duplicate_ids(tmp_path, frames):
    u = frames[1].copy()
    u.loc[5, "user_id"] = u.loc[2, "user_id"]
    assert _load_broken(tmp_path, frames, users=u) == (
        f"users.parquet: column 'user_id' row 5: duplicate id {u.loc[2, 'user_id']!r} (first at row 2)"
    )
    i = frames[2].copy()
    i.loc[7, "intent_id"] = i.loc[0, "intent_id"]
    assert "intents.parquet: column 'intent_id' row 7: duplicate id 'i0000' (first at row 0)" in _load_broken(
        tmp_path, frames, intents=i
    )


def test_missing_id(tmp_path, frames):
    m = frames[3].copy()
    m.loc[6, "request_id"] = ""
    assert "impressions.csv: column 'request_id' row 6 (line 8): missing id" in _load_broken(
        tmp_path, frames, "csv", impressions=m
    )


def test_empty_split_says_which_and_suggests_a_fraction(tmp_path, frames):
    s = frames[0]
    tiny = DatasetSchema.from_dict({**s.to_dict(), "split": {"by": "ts", "test_fraction": 0.2, "valid_fraction": 0.001}})
    msg = _load_broken(tmp_path, frames, schema=tiny)
    assert msg.startswith("impressions.parquet: split 'valid' is empty (60 requests x valid_fraction 0.001 rounds to 0)")
    assert "set split.valid_fraction in dataset.yaml to at least 0.02" in msg


def test_context_not_constant_within_request(tmp_path, frames):
    m = frames[3].copy()
    first = m.loc[0, "entry_page"]
    m.loc[1, "entry_page"] = "somewhere_else"
    assert _load_broken(tmp_path, frames, impressions=m) == (
        f"impressions.parquet: column 'entry_page' row 1: context feature not constant within request "
        f"'r0000000' ({first!r} at row 0, 'somewhere_else' here)"
    )
    m = frames[3].copy()
    m.loc[2, "user_id"] = m.loc[7, "user_id"] if m.loc[7, "user_id"] != m.loc[0, "user_id"] else "u000001"
    assert "column 'user_id' row 2: user_id not constant within request 'r0000000'" in _load_broken(
        tmp_path, frames, impressions=m
    )


def test_intent_shown_twice_in_a_request(tmp_path, frames):
    m = frames[3].copy()
    m.loc[3, "intent_id"] = m.loc[1, "intent_id"]
    assert "column 'intent_id' row 3: intent" in _load_broken(tmp_path, frames, impressions=m)


def test_group_key_not_a_column(tmp_path, frames):
    d = frames[0].to_dict()
    d["group_key"] = "session"
    msg = _load_broken(tmp_path, frames, schema=d)
    assert msg == "dataset.yaml: group_key 'session' is not a column of impressions.parquet or users.parquet; use user_id or request_id"


def test_group_key_may_be_request_or_user_column(frames):
    s, u, i, m = frames
    for gk in ("request_id", "region"):
        sch = DatasetSchema.from_dict({**s.to_dict(), "group_key": gk})
        assert Dataset.from_frames(sch, u, i, m).schema.group_key == gk


def test_bad_yaml_types(tmp_path, frames):
    d = frames[0].to_dict()
    d["user_features"]["numeric"] = "age"
    assert "dataset.yaml: user_features.numeric must be a list of column names" in _load_broken(tmp_path, frames, schema=d)
    d = frames[0].to_dict()
    del d["context_features"]
    assert "dataset.yaml: missing key 'context_features'" in _load_broken(tmp_path, frames, schema=d)


def test_split_by_column(tmp_path, frames):
    s, u, i, m = frames
    sch = DatasetSchema.from_dict({**s.to_dict(), "split": {"by": "column", "column": "fold"}})
    codes = pd.factorize(m["request_id"])[0]
    m2 = m.assign(fold=np.array(["train", "valid", "test"], dtype=object)[codes % 3])
    ds = load_dataset(write_dataset(tmp_path / "ds", sch, u, i, m2, "csv"))
    assert (ds.impressions["split"] == ds.impressions["fold"]).all()
    m2.loc[4, "fold"] = "dev"
    assert _load_broken(tmp_path, (sch, u, i, m2), "csv") == (
        "impressions.csv: column 'fold' row 4 (line 6): value 'dev' is not train/valid/test"
    )


def test_unreadable_file(tmp_path, frames):
    s, u, i, m = frames
    root = write_dataset(tmp_path / "ds", s, u, i, m)
    (root / "users.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"users.parquet: cannot read \("):
        load_dataset(root)


def test_split_spec_in_schema_is_used(frames):
    s, u, i, m = frames
    sch = DatasetSchema(**{**s.__dict__, "split": SplitSpec(by="ts", test_fraction=0.5, valid_fraction=0.25)})
    ds = Dataset.from_frames(sch, u, i, m)
    counts = ds.impressions.drop_duplicates("request_id")["split"].value_counts()
    assert counts["test"] == 30 and counts["valid"] == 15 and counts["train"] == 15
