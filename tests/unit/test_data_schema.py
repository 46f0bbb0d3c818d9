"""DatasetSchema / SplitSpec: construction, (de)serialisation, and one-line errors for bad YAML."""

from __future__ import annotations

import pytest

from rgalign.data.schema import DatasetSchema, SplitSpec, at
from rgalign.errors import DataError

GOOD = {
    "name": "logs",
    "user_features": {"categorical": ["gender", "tier"], "numeric": ["age"], "text": []},
    "context_features": {"categorical": ["entry_page"], "numeric": ["hour"], "text": ["recent_actions"]},
    "group_key": "user_id",
    "split": {"by": "ts", "test_fraction": 0.2},
}


def test_views_and_order():
    s = DatasetSchema.from_dict(GOOD)
    assert s.categorical == ("gender", "tier", "entry_page")
    assert s.numeric == ("age", "hour")
    assert s.text == ("recent_actions",)
    assert s.user_features == ("gender", "tier", "age")
    assert s.context_features == ("entry_page", "hour", "recent_actions")
    assert s.features == s.user_features + s.context_features
    assert s.split == SplitSpec(by="ts", test_fraction=0.2, valid_fraction=0.1)
    assert s.kind_of("hour") == "numeric"


def test_dict_and_yaml_round_trip(tmp_path):
    s = DatasetSchema.from_dict(GOOD)
    assert DatasetSchema.from_dict(s.to_dict()) == s
    s.to_yaml(tmp_path / "dataset.yaml")
    assert DatasetSchema.from_yaml(tmp_path / "dataset.yaml") == s
    col = DatasetSchema.from_dict({**GOOD, "split": {"by": "column", "column": "fold"}})
    assert col.split.by == "column" and col.split.column == "fold"
    assert DatasetSchema.from_dict(col.to_dict()) == col


def test_lists_become_tuples_and_hashable():
    s = DatasetSchema(name="x", user_categorical=["a"], context_numeric=["b"])  # type: ignore[arg-type]
    assert s.user_categorical == ("a",) and hash(s)


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"context_features": {"categorical": ["gender"]}}, "feature 'gender' is declared twice (user_features.categorical and context_features.categorical)"),
        ({"user_features": {"categorical": ["tier", "tier"]}}, "feature 'tier' is declared twice"),
        ({"user_features": {"numeric": ["label"]}}, "reserved column"),
        ({"name": 3}, "'name' must be a non-empty string"),
        ({"user_features": {"categorical": "gender"}}, "user_features.categorical must be a list"),
        ({"user_features": ["gender"]}, "'user_features' must be a mapping"),
        ({"user_features": {"categorial": ["gender"]}}, "unknown key user_features.categorial"),
        ({"splits": {"by": "ts"}}, "unknown key 'splits'"),
        ({"split": {"by": "time"}}, "split.by must be 'ts' or 'column', got 'time'"),
        ({"split": {"by": "ts", "test_fraction": "0.2"}}, "split.test_fraction must be a number"),
        ({"split": {"by": "ts", "test_fraction": 1.5}}, "split.test_fraction must be in [0, 1)"),
        ({"split": {"by": "ts", "test_fraction": 0.6, "valid_fraction": 0.5}}, "must be < 1"),
        ({"split": "ts"}, "'split' must be a mapping"),
        ({"group_key": ["user_id"]}, "group_key must be a column name"),
    ],
)
def test_bad_schema_is_one_clear_line(patch, message):
    with pytest.raises(DataError) as e:
        DatasetSchema.from_dict({**GOOD, **patch})
    assert message in str(e.value)
    assert str(e.value).startswith("dataset.yaml: ")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("key", ["name", "user_features", "context_features"])
def test_missing_key(key):
    d = {k: v for k, v in GOOD.items() if k != key}
    with pytest.raises(DataError, match=f"missing key '{key}'"):
        DatasetSchema.from_dict(d)


def test_yaml_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="dataset.yaml: missing file"):
        DatasetSchema.from_yaml(tmp_path / "dataset.yaml")
    p = tmp_path / "dataset.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(DataError, match=r"dataset.yaml: line \d+ not valid YAML"):
        DatasetSchema.from_yaml(p)
    p.write_text("- just\n- a list\n")
    with pytest.raises(DataError, match="expected a mapping"):
        DatasetSchema.from_yaml(p)
    p.write_text("name: x\nuser_features: {}\ncontext_features: {numeric: [a, a]}\n")
    with pytest.raises(DataError) as e:
        DatasetSchema.from_yaml(p)
    assert str(e.value).startswith(str(p)) and "declared twice" in str(e.value)


def test_at_adds_csv_line():
    assert at("impressions.parquet", "label", 17) == "impressions.parquet: column 'label' row 17"
    assert at("impressions.csv", "label", 17) == "impressions.csv: column 'label' row 17 (line 19)"
