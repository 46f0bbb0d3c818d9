"""Triton's response cache (`rgalign serve --cache-mb`) on both layouts: the same answers with and
without it, and its hits counted on the metrics endpoint."""

from __future__ import annotations

import numpy as np
import pytest

from rgalign.errors import ConfigError
from rgalign.serve.server.cache import CacheStats, parse_metrics, read_stats, server_args
from rgalign.serve.client import RgalignClient
from rgalign.serve.server import TritonServer

START_TIMEOUT = 120

METRICS = """# HELP nv_cache_num_hits_per_model Number of cache hits per model
nv_cache_num_hits_per_model{model="rgalign",version="1"} 10
nv_cache_hit_duration_per_model{model="rgalign",version="1"} 40
nv_cache_num_misses_per_model{model="rgalign",version="1"} 5
nv_cache_miss_duration_per_model{model="rgalign",version="1"} 92
nv_cache_num_hits_per_model{model="other",version="1"} 7
nv_inference_count{model="rgalign",version="1"} 15
"""


def test_parse_metrics():
    stats = parse_metrics(METRICS)
    assert stats == CacheStats(hits=10, misses=5, hit_us=40, miss_us=92)
    assert stats.hit_rate == pytest.approx(2 / 3)
    assert (stats - CacheStats(hits=4, misses=5)).hit_rate == 1.0
    assert parse_metrics("", "rgalign").hit_rate is None


def test_server_args():
    assert server_args(0) == []
    with pytest.raises(ConfigError):
        server_args(-1)


@pytest.mark.triton
def test_server_args_point_at_the_wheels_local_cache():
    args = server_args(8)
    assert args[0] == "--cache-directory" and args[2] == f"--cache-config=local,size={8 << 20}"


def _answers(repo, records, cache_mb, tmp_path, name):
    server = TritonServer(repo, log_file=tmp_path / f"{name}.log", extra_args=server_args(cache_mb))
    with server:
        with RgalignClient(server.grpc_url, protocol="grpc") as client:
            first = [client.rank([r], k=5)[0] for r in records]
            before = read_stats(server.metrics_url)
            second = [client.rank([r], k=5)[0] for r in records]
            stats = read_stats(server.metrics_url) - before
    return first, second, stats


@pytest.mark.triton
@pytest.mark.parametrize("layout", ["ensemble", "fused"])
def test_cache_on_and_off_answer_the_same(layout, layout_repos, serve_records, tmp_path):
    records = serve_records[:40]
    off_1, off_2, off_stats = _answers(layout_repos[layout], records, 0, tmp_path, "off")
    on_1, on_2, on_stats = _answers(layout_repos[layout], records, 16, tmp_path, "on")
    assert off_stats.hits == 0 and off_stats.hit_rate is None  # no cache on that server
    assert on_stats.hits == len(records) and on_stats.misses == 0  # the second pass: every one hits
    for answers in (off_2, on_1, on_2):
        assert [a.intent_ids for a in answers] == [a.intent_ids for a in off_1]
        np.testing.assert_array_equal([a.scores for a in answers], [a.scores for a in off_1])
