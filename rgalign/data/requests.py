"""Request-level arrays: one row per request with its encoded features and its slate (SPEC §1–§4).

The models work on requests, not impressions: the reasoner reads a request's features once, the
ranker scores its whole slate (ListNet is a loss over a request's impressions), and the ranking
metrics rank all KB intents per request. :func:`build_requests` turns a split's impressions into
padded arrays, vectorised (factorize + stable sort), with no Python loop over impressions.

Shapes: ``R`` requests, ``S`` = the largest slate in the split, ``Fc`` / ``Fn`` categorical /
numeric fields.

Example::

    >>> ra = build_requests(dataset, encoders, "train")   # doctest: +SKIP
    >>> ra.shown.shape, ra.mask.sum(1)[:3]                # doctest: +SKIP
    ((14000, 10), array([10, 10, 10]))
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from rgalign.data.loader import request_frame
from rgalign.data.schema import SPLITS
from rgalign.errors import DataError

if TYPE_CHECKING:
    from rgalign.data.encoders import FeatureEncoders
    from rgalign.data.loader import Dataset

PAD = -1  # intent index of an empty slate slot


@dataclass
class RequestArrays:
    """A split's requests as aligned arrays (row ``r`` of every field is request ``r``).

    Attributes:
        request_ids: ``(R,)`` object array of str.
        user_ids: ``(R,)`` object array of str.
        ts: ``(R,)`` int64, the request's earliest impression time.
        cat: ``(R, Fc)`` int64 categorical codes (0 = out of vocabulary), user then context fields.
        num: ``(R, Fn)`` float32 standardised numeric features.
        raw: R dicts of raw user + context feature values (keys = feature names in schema order,
            text verbatim, numbers as int/float): what the reasoner's prompt is built from, and
            what a serving request carries.
        shown: ``(R, S)`` int64 KB indices of the intents shown, in slate order, padded with -1.
        labels: ``(R, S)`` float32 clicks (0 where padded).
        mask: ``(R, S)`` bool, True on real slots.
        groups: ``(R,)`` object array, the ``group_key`` value of each request (GAUC groups).
    """

    request_ids: np.ndarray
    user_ids: np.ndarray
    ts: np.ndarray
    cat: np.ndarray
    num: np.ndarray
    raw: list[dict[str, Any]]
    shown: np.ndarray
    labels: np.ndarray
    mask: np.ndarray
    groups: np.ndarray

    def __len__(self) -> int:
        return len(self.request_ids)

    @property
    def slate_size(self) -> int:
        """``S``, the padded slate width."""
        return self.shown.shape[1]

    def subset(self, idx: np.ndarray | list[int] | slice) -> "RequestArrays":
        """The requests at ``idx`` (integer positions, a boolean mask or a slice), same ``S``."""
        if isinstance(idx, slice):
            pos = np.arange(len(self))[idx]
        else:
            pos = np.asarray(idx)
            if pos.dtype == bool:
                if pos.shape != (len(self),):
                    raise DataError(f"subset: boolean mask of shape {pos.shape}, expected ({len(self)},)")
                pos = np.flatnonzero(pos)
            pos = pos.astype(np.int64, copy=False)
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = [v[i] for i in pos] if f.name == "raw" else v[pos]
        return RequestArrays(**out)


def build_requests(dataset: "Dataset", encoders: "FeatureEncoders", split: str) -> RequestArrays:
    """One row per request of ``split``, in order of first appearance in ``dataset.impressions``;
    slots in order of appearance within the request (the slate order of the log)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    imp = dataset.split_impressions(split)
    if len(imp) == 0:
        raise DataError(f"split '{split}' has no requests")
    table, codes, first = request_frame(dataset, imp)
    n_req = len(first)

    # Slot of each impression within its request: rank among the request's rows, computed with a
    # stable sort by request code (rows keep their order inside a request).
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=n_req)
    starts = np.cumsum(counts) - counts
    slot = np.empty(len(codes), dtype=np.int64)
    slot[order] = np.arange(len(codes)) - np.repeat(starts, counts)
    width = int(counts.max())

    shown = np.full((n_req, width), PAD, dtype=np.int64)
    shown[codes, slot] = encoders.intent_index(imp["intent_id"])
    labels = np.zeros((n_req, width), dtype=np.float32)
    labels[codes, slot] = imp["label"].to_numpy(dtype=np.float32)
    mask = shown != PAD

    cat, num = encoders.encode_frame(table)
    feats = list(dataset.schema.features)
    # to_dict("records") boxes numpy scalars into Python int / float / str: JSON-ready.
    raw = table[feats].to_dict("records") if feats else [{} for _ in range(n_req)]

    gk = dataset.schema.group_key
    if gk in table.columns:
        groups = table[gk].to_numpy(dtype=object)
    elif gk in imp.columns:
        groups = imp[gk].to_numpy(dtype=object)[first]
    else:  # a users column that is not a feature
        groups = dataset.users.set_index("user_id")[gk].reindex(table["user_id"].to_numpy()).to_numpy(dtype=object)

    return RequestArrays(
        request_ids=table["request_id"].to_numpy(dtype=object),
        user_ids=table["user_id"].to_numpy(dtype=object),
        ts=table["ts"].to_numpy(dtype=np.int64),
        cat=cat,
        num=num,
        raw=raw,
        shown=shown,
        labels=labels,
        mask=mask,
        groups=groups,
    )
