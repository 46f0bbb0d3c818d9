"""Impressions by shard and in batches: what lets the log grow past one process's memory.

Each rank of a multi-process job reads only its share of the impressions (``impressions.parquet``,
or a folder ``impressions/`` of parquet files): the log's row groups, listed through
``pyarrow.dataset``, are cut into ``world`` contiguous runs of about equal rows, and each cut is
moved forward to the next request boundary, so a request's impressions stay on one rank. The
shards are disjoint and cover every row. Finding a cut reads one column (``request_id``) of the
row groups around it, nothing else. The log must keep a request's rows together (as
``rgalign data synth`` and request logs write them); a request found in two places of a shard
is an error, not a silent double count.

Within a shard, rows are read in batches (`ImpressionShard.frames`), never as one table, and
`fit_encoders_streamed` fits the `FeatureEncoders` from such passes: one over ``request_id, ts``
(each request's time, for the ts split, which needs every request's time: ``R`` int64s, gathered
from the ranks) and one over the feature columns (vocabularies and mergeable mean/variance
accumulators), merged across ranks, so every rank gets the encoders an in-memory fit gives
(tests/unit/test_data_shards.py). Users and intents are read whole: they are what a log grows
much slower in than in impressions.

Example::

    >>> fit = fit_encoders_streamed("data/big", rank=0, world=2, gather=all_gather)  # doctest: +SKIP
    >>> shard = load_shard("data/big", fit)     # this rank's requests, globally split  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rgalign.data.encoders import FeatureEncoders
from rgalign.data.loader import Dataset, _find_table, _read_table, require_pyarrow, validate_users_intents
from rgalign.data.schema import DatasetSchema
from rgalign.data.splits import assign_splits
from rgalign.errors import DataError

# From this many impressions `should_stream` says to fit by streamed passes. Rows, not bytes: a
# repetitive log compresses 100x or more (the 5M-impression synthetic log is 18 MB of parquet),
# while in pandas each row costs about the same, ~0.65 KB (1M synthetic impressions: +650 MB
# peak RSS for load_dataset + fit, measured), so 2M rows are ~1.3 GB per rank.
STREAM_ROWS = 2_000_000
BATCH_ROWS = 65_536  # rows per batch read: ~10 MB of feature columns, the stream's working set

Gather = Callable[[Any], list[Any]]  # all-gather of a picklable object, in rank order


def _one_process(obj: Any) -> list[Any]:
    return [obj]


def impressions_source(root: str | Path) -> Path:
    """``root/impressions.parquet``, or a folder ``root/impressions/`` of parquet files."""
    root = Path(root)
    for candidate in (root / "impressions.parquet", root / "impressions"):
        if candidate.exists():
            return candidate
    raise DataError(f"{root}: the sharded reader needs impressions.parquet or a folder impressions/ of parquet files")


def should_stream(root: str | Path) -> bool:
    """Whether the impressions are many enough (`STREAM_ROWS`, read from the parquet metadata)
    to fit encoders by streaming."""
    return sum(g.rows for g in row_groups(impressions_source(root))) >= STREAM_ROWS


@dataclass(frozen=True)
class RowGroup:
    path: str
    index: int  # the row group within its file
    start: int  # global row of its first row
    rows: int


def row_groups(source: str | Path) -> list[RowGroup]:
    """Every row group of the impressions, files in name order: the units shards are made of."""
    require_pyarrow("reading impressions by shard")
    import pyarrow.dataset as ds

    out, start = [], 0
    for frag in sorted(ds.dataset(str(source), format="parquet").get_fragments(), key=lambda f: f.path):
        frag.ensure_complete_metadata()
        for rg in frag.row_groups:
            out.append(RowGroup(frag.path, rg.id, start, rg.num_rows))
            start += rg.num_rows
    return out


class ImpressionShard:
    """Rows ``[start, stop)`` of the impressions: rank ``rank`` of ``world``, whole requests."""

    def __init__(self, source: str | Path, rank: int = 0, world: int = 1) -> None:
        if not 0 <= rank < world:
            raise DataError(f"shard {rank} of {world}: need 0 <= rank < world")
        self.source, self.rank, self.world = Path(source), rank, world
        self.groups = row_groups(self.source)
        self.total = sum(g.rows for g in self.groups)
        self._files: dict[str, Any] = {}
        self.start = self._cut(rank)
        self.stop = self._cut(rank + 1)

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def _file(self, path: str):
        if path not in self._files:
            import pyarrow.parquet as pq

            self._files[path] = pq.ParquetFile(path)
        return self._files[path]

    def _ids(self, g: RowGroup) -> np.ndarray:
        return self._file(g.path).read_row_group(g.index, columns=["request_id"]).column(0).to_numpy(zero_copy_only=False)

    def _cut(self, r: int) -> int:
        """First row of shard ``r``: the first row group starting at or after ``r/world`` of the
        rows, moved past the rows that continue the request before it."""
        if r <= 0:
            return 0
        if r >= self.world:
            return self.total
        k = next((i for i, g in enumerate(self.groups) if g.start >= round(r * self.total / self.world)), None)
        if k is None or k == 0:
            return self.total if k is None else 0
        prev = self._ids(self.groups[k - 1])[-1]
        for g in self.groups[k:]:
            ids = self._ids(g)
            other = np.flatnonzero(ids != prev)
            if len(other):
                return g.start + int(other[0])
        return self.total

    def frames(self, columns: Sequence[str] | None = None, batch_rows: int = BATCH_ROWS) -> Iterator[pd.DataFrame]:
        """This shard's rows in order, ``batch_rows`` at a time (fewer at row-group ends)."""
        for g in self.groups:
            lo, hi = max(self.start, g.start), min(self.stop, g.start + g.rows)
            if lo >= hi:
                continue
            pos = g.start
            for batch in self._file(g.path).iter_batches(batch_size=batch_rows, row_groups=[g.index],
                                                         columns=list(columns) if columns else None):
                a, b = max(lo - pos, 0), min(hi - pos, batch.num_rows)
                if a < b:
                    yield batch.slice(a, b - a).to_pandas()
                pos += batch.num_rows

    def read(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """The whole shard as one frame (1/world of the log): its row groups read whole, the
        first and last cut to the shard, converted to pandas once."""
        import pyarrow as pa

        parts = []
        for g in self.groups:
            lo, hi = max(self.start, g.start), min(self.stop, g.start + g.rows)
            if lo < hi:
                table = self._file(g.path).read_row_group(g.index, columns=list(columns) if columns else None)
                parts.append(table.slice(lo - g.start, hi - lo))
        if not parts:
            return pd.DataFrame(columns=list(columns or []))
        return pa.concat_tables(parts).to_pandas()


# ------------------------------------------------------------------ request runs in a stream
@dataclass
class _Runs:
    """Carries the request at a batch's end into the next batch."""

    last: Any = None
    starts: list[np.ndarray] = field(default_factory=list)  # hashed ids of each request start

    def mark(self, rid: np.ndarray) -> np.ndarray:
        """(n,) bool: row starts a new request."""
        new = np.empty(len(rid), dtype=bool)
        if len(rid):
            new[0] = rid[0] != self.last
            new[1:] = rid[1:] != rid[:-1]
            self.last = rid[-1]
            self.starts.append(pd.util.hash_array(rid[new].astype(object)))
        return new

    def check_grouped(self, where: str) -> None:
        ids = np.concatenate(self.starts) if self.starts else np.zeros(0, np.uint64)
        if len(np.unique(ids)) != len(ids):
            raise DataError(f"{where}: a request's impressions are not contiguous (a request id starts twice); "
                            "sort the log by request (or by ts, then request) to read it by shard")


@dataclass
class StreamedFit:
    """What `fit_encoders_streamed` returns: the encoders (the same on every rank), this rank's
    shard and the split of each of its requests, in order."""

    encoders: FeatureEncoders
    shard: ImpressionShard
    request_splits: np.ndarray  # (R_shard,) "train" / "valid" / "test"
    requests_total: int
    schema: DatasetSchema
    users: pd.DataFrame
    intents: pd.DataFrame


@dataclass
class _Moments:
    """Count, mean and sum of squared deviations per column, merged exactly as Chan et al.'s
    parallel variance: batches and ranks combine in any grouping."""

    n: int = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None

    def add(self, values: np.ndarray) -> None:
        if len(values):
            self.merge(_Moments(len(values), values.mean(axis=0), ((values - values.mean(axis=0)) ** 2).sum(axis=0)))

    def merge(self, o: _Moments) -> None:
        if o.n == 0:
            return
        if self.n == 0:
            self.n, self.mean, self.m2 = o.n, o.mean, o.m2
            return
        n = self.n + o.n
        delta = o.mean - self.mean
        self.mean = self.mean + delta * (o.n / n)
        self.m2 = self.m2 + o.m2 + delta**2 * (self.n * o.n / n)
        self.n = n


def _read_small(root: Path, schema: DatasetSchema) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Users and intents, read whole and checked by the loader's own checks."""
    string_cols = {"users": ["user_id", *schema.user_categorical, *schema.user_text],
                   "intents": ["intent_id", "text", "category"]}
    files = {t: _find_table(root, t) for t in string_cols}
    frames = {t: _read_table(f, string_cols[t]) for t, f in files.items()}
    return validate_users_intents(schema, frames["users"], frames["intents"], {t: f.name for t, f in files.items()})


def fit_encoders_streamed(
    root: str | Path, rank: int = 0, world: int = 1, gather: Gather | None = None, batch_rows: int = BATCH_ROWS,
) -> StreamedFit:
    """Fit `FeatureEncoders` as `FeatureEncoders.fit` does (train split, one row per request),
    reading only this rank's shard, ``batch_rows`` at a time. Collective when ``world`` > 1:
    ``gather`` (an all-gather of picklable objects) is called three times on every rank."""
    gather = gather or _one_process
    root = Path(root)
    schema = DatasetSchema.from_yaml(root / "dataset.yaml")
    users, intents = _read_small(root, schema)
    shard = ImpressionShard(impressions_source(root), rank, world)
    where = shard.source.name
    by_column = schema.split.by == "column"

    # pass 1: each request's earliest ts (or its split column), in order
    runs = _Runs()
    req_ts: list[np.ndarray] = []
    req_col: list[np.ndarray] = []
    carry_ts = None
    cols = ["request_id", "ts"] + ([schema.split.column] if by_column else [])
    for frame in shard.frames(cols, batch_rows):
        rid = frame["request_id"].astype(str).to_numpy(dtype=object)
        new = runs.mark(rid)
        ts = frame["ts"].to_numpy(dtype=np.int64)
        starts = np.flatnonzero(new)
        if by_column:
            req_col.append(frame[schema.split.column].astype(str).to_numpy(dtype=object)[starts])
        if len(starts) == 0:  # the whole batch continues the previous request
            carry_ts = min(carry_ts, ts.min())
            continue
        if starts[0] > 0:
            carry_ts = min(carry_ts, ts[: starts[0]].min())
        mins = np.minimum.reduceat(ts, starts)
        if carry_ts is not None:
            req_ts.append(np.array([carry_ts]))
        req_ts.append(mins[:-1])
        carry_ts = mins[-1]
    if carry_ts is not None:
        req_ts.append(np.array([carry_ts]))
    runs.check_grouped(where)
    local_ts = np.concatenate(req_ts) if req_ts else np.zeros(0, np.int64)
    if by_column:
        local_split = np.concatenate(req_col) if req_col else np.zeros(0, object)
    else:
        all_ts = gather(local_ts)
        offset = sum(len(t) for t in all_ts[:rank])
        every = np.concatenate(all_ts)
        frame = pd.DataFrame({"request_id": np.arange(len(every)), "ts": every})
        split = assign_splits(frame, schema.split, where).to_numpy(dtype=object)
        local_split = split[offset : offset + len(local_ts)]

    # pass 2: the training requests' features, one row per request
    user_table = users.set_index("user_id")[list(schema.user_features)]
    vocab_local: dict[str, set[str]] = {f: set() for f in schema.categorical}
    moments = _Moments()
    runs, seen = _Runs(), 0
    ctx_cols = list(schema.context_categorical) + list(schema.context_numeric)
    for frame in shard.frames(["request_id", "user_id", *ctx_cols], batch_rows):
        new = runs.mark(frame["request_id"].astype(str).to_numpy(dtype=object))
        head = frame[new]
        keep = local_split[seen : seen + len(head)] == "train"
        seen += len(head)
        head = head[keep]
        uid = head["user_id"].astype(str).to_numpy(dtype=object)
        pos = user_table.index.get_indexer(uid)  # (Series.isin on arrow strings is ~10x slower)
        if (pos < 0).any():
            raise DataError(f"{where}: unknown user {uid[int(np.flatnonzero(pos < 0)[0])]!r} (not in users)")
        joined = user_table.iloc[pos]
        table = pd.concat([joined.reset_index(drop=True), head[ctx_cols].reset_index(drop=True)], axis=1)
        for f in schema.categorical:
            vocab_local[f].update(table[f].astype(str).where(table[f].notna(), "").unique().tolist())
        values = table[list(schema.numeric)].to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            raise DataError(f"{where}: NaN or infinite numeric feature in a training request")
        moments.add(values)

    vocab, merged = {f: set() for f in schema.categorical}, _Moments()
    for part_vocab, part in gather((vocab_local, moments)):
        for f in vocab:
            vocab[f] |= part_vocab[f]
        merged.merge(part)
    n = merged.n
    means = merged.mean.tolist() if n else [0.0] * len(schema.numeric)
    stds = np.sqrt(merged.m2 / n).tolist() if n else [1.0] * len(schema.numeric)
    encoders = FeatureEncoders(
        categorical_fields=schema.categorical, vocabs={f: sorted(v) for f, v in vocab.items()},
        numeric_fields=schema.numeric, means=means, stds=stds, text_fields=schema.text,
        intent_ids=intents["intent_id"].tolist(), intent_texts=intents["text"].tolist(),
        user_fields=schema.user_features, context_fields=schema.context_features,
    )
    total = sum(gather(len(local_split)))
    return StreamedFit(encoders, shard, local_split, total, schema, users, intents)


def load_shard(root: str | Path, fit: StreamedFit) -> Dataset:
    """This rank's requests as a validated `Dataset`, each in the split the whole log gives it
    (a shard may hold no valid or test request: a ts-ordered log's first shard is all training)."""
    imp = fit.shard.read()
    rid = imp["request_id"].astype(str)
    new = rid.ne(rid.shift()).to_numpy(dtype=bool, na_value=True)  # vectorised: no Python strings
    run = np.cumsum(new) - 1
    if len(fit.request_splits) != (run[-1] + 1 if len(run) else 0):
        raise DataError(f"{fit.shard.source}: the shard changed since the encoders were fitted")
    splits = pd.Series(fit.request_splits[run], dtype="str")
    return Dataset.from_frames(fit.schema, fit.users, fit.intents, imp, root=Path(root), splits=splits)
