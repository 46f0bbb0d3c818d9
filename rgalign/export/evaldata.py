"""The requests an export is judged and calibrated on.

`EvalRequests` holds held-out raw requests (what a client sends) with the intents that were
shown and clicked: the int8 gate runs the whole pipeline (prompt -> reasoner -> ranker) on them
and compares GAUC over the shown intents with the fp32 pipeline's. Calibration of static int8 uses
*training* requests' raw features (`calibration_records`).

Both come from the caller (``export_run(..., eval_requests=..., calibration_records=...)``), or
else from the run's dataset (``run.json`` -> ``data.path``: test split for the gate, train split
for calibration), when that folder still exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rgalign.errors import ExportError
from rgalign.metrics import gauc

# held-out requests judged: ~10k shown impressions, enough for a GAUC *difference* (both
# pipelines score the same impressions, so the comparison is paired), small enough that each
# int8 candidate is judged end to end in a few seconds on a CPU
MAX_EVAL_REQUESTS = 1000
# training requests the static int8 ranges are calibrated on (as 16 batches of 16)
MAX_CALIBRATION_REQUESTS = 256


@dataclass(frozen=True)
class EvalRequests:
    """Held-out requests: ``records`` (R raw feature dicts), ``shown`` (R, S) int64 KB indices of
    the shown intents (-1 = empty slot), ``labels`` (R, S) clicks, ``groups`` (R,) GAUC groups."""

    records: list[dict[str, Any]]
    shown: np.ndarray
    labels: np.ndarray
    groups: np.ndarray

    def __post_init__(self) -> None:
        r = len(self.records)
        if self.shown.shape != self.labels.shape or self.shown.ndim != 2 or self.shown.shape[0] != r:
            raise ExportError(
                f"eval requests: {r} records, shown {self.shown.shape}, labels {self.labels.shape}: "
                "shown and labels must both be (R, S)"
            )
        if len(self.groups) != r:
            raise ExportError(f"eval requests: {r} records but {len(self.groups)} groups")

    def __len__(self) -> int:
        return len(self.records)

    @classmethod
    def from_request_arrays(cls, ra: Any, limit: int | None = MAX_EVAL_REQUESTS, seed: int = 0) -> EvalRequests:
        """From `rgalign.data.requests.RequestArrays` (a seeded sample of ``limit`` requests)."""
        idx = np.arange(len(ra))
        if limit is not None and len(idx) > limit:
            idx = np.sort(np.random.default_rng(seed).choice(idx, size=limit, replace=False))
        return cls(
            records=[ra.raw[i] for i in idx],
            shown=np.asarray(ra.shown)[idx].astype(np.int64),
            labels=np.asarray(ra.labels)[idx].astype(np.float32),
            groups=np.asarray(ra.groups, dtype=object)[idx],
        )

    def gauc(self, all_scores: np.ndarray) -> float:
        """GAUC over the shown intents, given scores of every KB intent (R, N) for each request."""
        mask = self.shown >= 0
        rows = np.nonzero(mask)[0]
        scores = np.take_along_axis(all_scores, np.where(mask, self.shown, 0), axis=1)[mask]
        return gauc(self.labels[mask], scores, self.groups[rows])


def requests_from_dataset(data_path: Path, encoders: Any) -> tuple[EvalRequests, list[dict[str, Any]]]:
    """(held-out test requests, training records for calibration) of a dataset folder."""
    from rgalign.inference.records import dataset_requests

    splits = dataset_requests(data_path, encoders, ("test", "train"))
    test, train = splits["test"], splits["train"]
    n = len(train)
    pick = np.arange(n)
    if n > MAX_CALIBRATION_REQUESTS:
        pick = np.sort(np.random.default_rng(0).choice(n, size=MAX_CALIBRATION_REQUESTS, replace=False))
    return EvalRequests.from_request_arrays(test), [train.raw[i] for i in pick]
