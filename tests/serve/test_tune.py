"""`rgalign tune` on the tiny export: a real sweep of two configurations with perf_analyzer."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.triton, pytest.mark.perf_analyzer]


def test_tune_writes_the_best_config_and_the_frontier(serve_export, serve_records, tmp_path):
    from rgalign.bench.perf_analyzer import Settings
    from rgalign.bench.tune import Goal, Grid, tune
    from rgalign.serve.repository import config as tc

    grid = Grid(layouts=("fused", "ensemble"), instances=(1,), max_batch=(8,), queue_delay_us=(100,))
    result = tune(serve_export, tmp_path / "tune", serve_records, grid=grid, goal=Goal(1000.0, 1.0),
                  concurrencies=(2,), precision="fp32", threads=1,
                  settings=Settings(interval_ms=500, stability=50, max_trials=3))
    assert [m["status"] for m in result["measurements"]] == ["OK", "OK"], result["measurements"]
    for m in result["measurements"]:
        assert m["throughput"] > 0 and m["memory"]["rss_mb"] > 0 and m["memory"]["processes"] >= 2
    best = json.loads((tmp_path / "tune" / "best.json").read_text())
    assert best["found"] and best["goal_met"] and best["command"].startswith("rgalign deploy ")
    layout = best["deploy_options"]["layout"]
    config = tc.read_config(tmp_path / "tune" / "best" / "rgalign")
    assert (config.platform == "ensemble") == (layout == "ensemble")
    assert (tmp_path / "tune" / "frontier.png").stat().st_size > 1000
