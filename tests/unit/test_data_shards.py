"""Impressions read by shard (each rank its own row groups, whole requests) and encoders fitted
from streamed batches: the same encoders and splits as the in-memory path."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from rgalign.data import FeatureEncoders, load_dataset, synthesize
from rgalign.data.shards import ImpressionShard, fit_encoders_streamed, impressions_source, load_shard, should_stream
from rgalign.errors import DataError


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """400 requests x 8 impressions, rewritten in row groups of 250 rows: requests straddle them."""
    root = synthesize(tmp_path_factory.mktemp("shards") / "data", users=60, intents=50, requests=400, seed=0,
                      slate_size=8)
    table = pq.read_table(root / "impressions.parquet")
    pq.write_table(table, root / "impressions.parquet", row_group_size=250)
    return root


def _threads(world: int, fn):
    """Run ``fn(rank, gather)`` for every rank in threads, with an in-process all-gather."""
    barrier, slots, out = threading.Barrier(world), {}, [None] * world

    def gather_for(rank):
        def gather(obj):
            slots[rank] = obj
            barrier.wait()
            got = [slots[r] for r in range(world)]
            barrier.wait()
            return got
        return gather

    def run(rank):
        out[rank] = fn(rank, gather_for(rank))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_shards_are_disjoint_cover_every_row_and_keep_requests_whole(data, world):
    src = impressions_source(data)
    shards = [ImpressionShard(src, r, world) for r in range(world)]
    assert shards[0].start == 0 and shards[-1].stop == 3200
    assert all(a.stop == b.start for a, b in zip(shards, shards[1:]))
    rid = pq.read_table(src, columns=["request_id"]).column(0).to_numpy(zero_copy_only=False)
    for s in shards:
        if 0 < s.start < len(rid):
            assert rid[s.start] != rid[s.start - 1]  # a cut is a request boundary
        rows = pd.concat(list(s.frames(["request_id"], batch_rows=64)), ignore_index=True) if s.rows else None
        if rows is not None:
            assert rows["request_id"].tolist() == rid[s.start : s.stop].tolist()
    assert sum(s.rows for s in shards) == 3200


def _same_encoders(a: FeatureEncoders, b: FeatureEncoders) -> None:
    assert a.vocabs == b.vocabs and a.intent_ids == b.intent_ids and a.features == b.features
    np.testing.assert_allclose(a.means, b.means, rtol=1e-12)
    np.testing.assert_allclose(a.stds, b.stds, rtol=1e-9)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_streamed_fit_equals_the_in_memory_fit(data, world):
    expected = FeatureEncoders.fit(load_dataset(data))
    fits = _threads(world, lambda r, g: fit_encoders_streamed(data, r, world, gather=g, batch_rows=100))
    for fit in fits:
        _same_encoders(fit.encoders, expected)


def test_shards_carry_the_split_of_the_whole_log(data):
    full = load_dataset(data)
    expected = full.impressions.groupby("request_id", sort=False)["split"].first()
    fits = _threads(2, lambda r, g: fit_encoders_streamed(data, r, 2, gather=g, batch_rows=100))
    got = pd.concat([load_shard(data, f).impressions.groupby("request_id", sort=False)["split"].first() for f in fits])
    assert got.index.tolist() == expected.index.tolist()
    assert got.tolist() == expected.tolist()


def test_a_folder_of_files_is_one_log(data, tmp_path):
    import shutil

    for f in ("dataset.yaml", "users.parquet", "intents.parquet"):
        shutil.copy(data / f, tmp_path / f)
    table = pq.read_table(data / "impressions.parquet")
    (tmp_path / "impressions").mkdir()
    pq.write_table(table.slice(0, 1001), tmp_path / "impressions" / "part-0.parquet", row_group_size=300)
    pq.write_table(table.slice(1001), tmp_path / "impressions" / "part-1.parquet", row_group_size=300)
    _same_encoders(fit_encoders_streamed(tmp_path).encoders, FeatureEncoders.fit(load_dataset(data)))
    assert not should_stream(tmp_path)


def test_a_log_not_grouped_by_request_is_refused(data, tmp_path):
    import shutil

    for f in ("dataset.yaml", "users.parquet", "intents.parquet"):
        shutil.copy(data / f, tmp_path / f)
    table = pq.read_table(data / "impressions.parquet")
    pq.write_table(table.take(np.random.default_rng(0).permutation(table.num_rows)), tmp_path / "impressions.parquet")
    with pytest.raises(DataError, match="not contiguous"):
        fit_encoders_streamed(tmp_path)
