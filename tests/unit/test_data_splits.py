"""assign_splits: by ts (temporal, request level, deterministic ties) and by column."""

from __future__ import annotations

import pandas as pd
import pytest

from rgalign.data.schema import SplitSpec
from rgalign.data.splits import assign_splits
from rgalign.errors import DataError


def _imp(n_req: int, per_req: int = 3, ts=None) -> pd.DataFrame:
    ts = list(range(n_req)) if ts is None else ts
    rows = [(f"r{r}", ts[r]) for r in range(n_req) for _ in range(per_req)]
    return pd.DataFrame(rows, columns=["request_id", "ts"])


def test_by_ts_last_requests_are_test():
    imp = _imp(10)
    s = assign_splits(imp, SplitSpec(by="ts", test_fraction=0.2, valid_fraction=0.1))
    per_req = s.groupby(imp["request_id"]).agg(set)
    assert all(len(v) == 1 for v in per_req)  # never split inside a request
    by_req = s.groupby(imp["request_id"], sort=False).first().tolist()
    assert by_req == ["train"] * 7 + ["valid"] + ["test"] * 2
    assert s.index.equals(imp.index) and s.name == "split"


def test_by_ts_orders_by_time_not_file_order():
    # Requests appear out of time order in the file: the latest in time are test.
    imp = _imp(5, ts=[50, 10, 40, 20, 30])
    s = assign_splits(imp, SplitSpec(by="ts", test_fraction=0.2, valid_fraction=0.2))
    first = s.groupby(imp["request_id"], sort=False).first()
    assert first.to_dict() == {"r0": "test", "r1": "train", "r2": "valid", "r3": "train", "r4": "train"}


def test_by_ts_uses_earliest_ts_of_a_request_and_ties_are_deterministic():
    imp = pd.DataFrame({"request_id": ["a", "a", "b", "c", "d"], "ts": [9, 1, 5, 5, 5]})
    s = assign_splits(imp, SplitSpec(by="ts", test_fraction=0.25, valid_fraction=0.25))
    # a: ts 1 (its earliest) -> first; b, c, d tie at 5 -> order of appearance.
    assert s.tolist() == ["train", "train", "train", "valid", "test"]


def test_empty_split_errors():
    with pytest.raises(DataError, match=r"split 'test' is empty \(4 requests x test_fraction 0.1 rounds to 0\); set split.test_fraction in dataset.yaml to at least 0.25"):
        assign_splits(_imp(4), SplitSpec(by="ts", test_fraction=0.1, valid_fraction=0.3))
    with pytest.raises(DataError, match="split 'valid' is empty"):
        assign_splits(_imp(10), SplitSpec(by="ts", test_fraction=0.2, valid_fraction=0.0))


def test_by_column():
    imp = pd.DataFrame({"request_id": list("aabbc"), "fold": ["train", "train", "valid", "valid", "test"]})
    s = assign_splits(imp, SplitSpec(by="column", column="fold"))
    assert s.tolist() == imp["fold"].tolist()


@pytest.mark.parametrize(
    "fold, message",
    [
        (["train", "train", "valid", "dev", "test"], "impressions: column 'fold' row 3: value 'dev' is not train/valid/test"),
        (["train", "valid", "valid", "valid", "test"], "column 'fold' row 1: request 'a' is split across sets"),
        (["train", "train", "train", "train", "test"], "split 'valid' is empty (no request has fold == 'valid')"),
        (["train", "train", "valid", None, "test"], "column 'fold' row 3: missing value"),
    ],
)
def test_by_column_errors(fold, message):
    imp = pd.DataFrame({"request_id": list("aabbc"), "fold": fold})
    with pytest.raises(DataError) as e:
        assign_splits(imp, SplitSpec(by="column", column="fold"))
    assert message in str(e.value)


def test_by_column_missing_column():
    with pytest.raises(DataError, match="impressions: missing column 'split'"):
        assign_splits(_imp(3), SplitSpec(by="column"))
