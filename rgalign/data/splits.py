"""Train / valid / test assignment, always at request level (SPEC §1).

A request's impressions are never split across sets: the ranker's listwise loss and the ranking
metrics look at a request's whole slate, and a request in two sets would leak its labels.

Example::

    >>> imp = pd.DataFrame({"request_id": ["a", "a", "b", "c", "d"], "ts": [1, 1, 2, 3, 4]})
    >>> assign_splits(imp, SplitSpec(by="ts", test_fraction=0.25, valid_fraction=0.25)).tolist()
    ['train', 'train', 'train', 'valid', 'test']
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from rgalign.data.schema import SPLITS, SplitSpec, at
from rgalign.errors import DataError


def request_codes(request_ids: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Integer code per impression and the first row of each request.

    Returns ``codes (N,) int64`` in ``[0, R)``, numbered in order of first appearance, and
    ``first (R,) int64``: the position of each request's first impression.
    """
    codes, uniques = pd.factorize(request_ids, sort=False)
    codes = codes.astype(np.int64, copy=False)
    # np.unique's return_index is documented to give the FIRST occurrence of each code.
    _, first = np.unique(codes, return_index=True)
    return codes, first.astype(np.int64)


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))  # half up: Python's round() is half-to-even


def _suggest(n_requests: int, current: float) -> float:
    """A fraction that gives the split at least one request (and a useful few where possible)."""
    need = max(1.0 / max(n_requests, 1), 0.1 if current == 0 else current)
    return min(0.5, math.ceil(need * 100) / 100)


def assign_splits(impressions: pd.DataFrame, spec: SplitSpec, source: str = "impressions") -> pd.Series:
    """``"train"`` / ``"valid"`` / ``"test"`` per impression, index aligned with ``impressions``.

    ``spec.by == "ts"``: each request's time is the earliest ``ts`` of its impressions; requests
    are ordered by it (ties by order of appearance, so the result is deterministic), the last
    ``round(R * test_fraction)`` are test, the ``round(R * valid_fraction)`` before them valid,
    the rest train. ``spec.by == "column"``: ``impressions[spec.column]`` must hold only
    train/valid/test and be constant within a request.

    Raises DataError naming ``source`` (the file) for a missing or bad column and for an empty
    split (with a fraction that would fill it).
    """
    if "request_id" not in impressions.columns:
        raise DataError(f"{source}: missing column 'request_id'")
    codes, first = request_codes(impressions["request_id"])
    n_req = len(first)
    if n_req == 0:
        raise DataError(f"{source}: no impressions; a dataset needs at least 3 requests (train, valid, test)")

    if spec.by == "ts":
        if "ts" not in impressions.columns:
            raise DataError(f"{source}: missing column 'ts' (dataset.yaml splits by ts)")
        ts = impressions["ts"].to_numpy()
        req_ts = pd.Series(ts).groupby(codes, sort=True).min().to_numpy()
        order = np.lexsort((np.arange(n_req), req_ts))  # by ts, then by first appearance
        rank = np.empty(n_req, dtype=np.int64)
        rank[order] = np.arange(n_req)
        n_test = _round(n_req * spec.test_fraction)
        n_valid = _round(n_req * spec.valid_fraction)
        req_split = np.zeros(n_req, dtype=np.int8)
        req_split[rank >= n_req - n_test - n_valid] = 1
        req_split[rank >= n_req - n_test] = 2
        counts = np.bincount(req_split, minlength=3)
        for k, name in enumerate(SPLITS):
            if counts[k] > 0:
                continue
            if name == "train":
                raise DataError(
                    f"{source}: split 'train' is empty ({n_req} requests, test_fraction "
                    f"{spec.test_fraction} + valid_fraction {spec.valid_fraction} take them all); "
                    "lower the fractions in dataset.yaml"
                )
            key = f"{name}_fraction"
            frac = getattr(spec, key)
            raise DataError(
                f"{source}: split '{name}' is empty ({n_req} requests x {key} {frac} rounds to 0); "
                f"set split.{key} in dataset.yaml to at least {_suggest(n_req, frac)}"
            )
    else:
        col = spec.column
        if col not in impressions.columns:
            raise DataError(
                f"{source}: missing column '{col}' (dataset.yaml splits by column '{col}', "
                "which must hold train/valid/test)"
            )
        values = impressions[col]
        isna = values.isna().to_numpy()
        if isna.any():
            row = int(np.flatnonzero(isna)[0])
            raise DataError(f"{at(source, col, row)}: missing value; expected train/valid/test")
        values = values.astype(str)
        split_code = pd.Index(SPLITS).get_indexer(values)
        bad = split_code < 0
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"{at(source, col, row)}: value {values.iloc[row]!r} is not train/valid/test")
        # All impressions of a request in one split: compare each row with its request's first row.
        diff = split_code != split_code[first][codes]
        if diff.any():
            row = int(np.flatnonzero(diff)[0])
            req = impressions["request_id"].iloc[row]
            r0 = int(first[codes[row]])
            raise DataError(
                f"{at(source, col, row)}: request {req!r} is split across sets "
                f"({values.iloc[r0]!r} at row {r0}, {values.iloc[row]!r} here); "
                "a request's impressions must all be in one split"
            )
        req_split = split_code[first].astype(np.int8)
        counts = np.bincount(req_split, minlength=3)
        for k, name in enumerate(SPLITS):
            if counts[k] == 0:
                raise DataError(
                    f"{source}: split '{name}' is empty (no request has {col} == '{name}'); mark some "
                    f"requests '{name}' (e.g. a fraction of {_suggest(n_req, 0.0 if name != 'test' else 0.2)})"
                )

    labels = np.asarray(SPLITS, dtype=object)[req_split[codes]]
    return pd.Series(labels, index=impressions.index, name="split", dtype="str")
