"""`rgalign tune`'s choice without a server: the Pareto frontier, the best configuration within
the latency budget, the grid."""

from __future__ import annotations

import os
import subprocess
import time

from rgalign.bench.tune import Goal, Grid, choose, name_of, pareto, process_cpu_seconds


def _m(config, c, rps, p99, status="OK"):
    return {"config": config, "concurrency": c, "throughput": rps, "p99_ms": p99, "status": status,
            "layout": config.split("-")[0]}


MEASURED = [
    _m("fused-a", 1, 300, 4.0), _m("fused-a", 16, 900, 30.0),
    _m("ensemble-b", 1, 200, 6.0), _m("ensemble-b", 16, 600, 45.0),
    _m("fused-c", 4, 700, 9.0), _m("fused-d", 4, 0, 0, status="FAIL"),
]


def test_pareto_frontier():
    assert [(p["config"], p["concurrency"]) for p in pareto(MEASURED)] == [
        ("fused-a", 1), ("fused-c", 4), ("fused-a", 16)]


def test_best_within_the_budget_and_the_goal():
    best = choose(MEASURED, Goal(latency_budget_ms=10, throughput_goal=800))
    assert best["found"] and best["measurement"]["config"] == "fused-c" and best["goal_met"] is False
    assert choose(MEASURED, Goal(latency_budget_ms=50, throughput_goal=800))["goal_met"] is True
    none = choose(MEASURED, Goal(latency_budget_ms=1))
    assert not none["found"] and "fused-a at c=1" in none["reason"]


def test_grid_points():
    grid = Grid(layouts=("fused",), instances=(1, 2), max_batch=(8,), queue_delay_us=(0, 500))
    points = grid.points()
    assert len(points) == 4 and name_of(points[-1]) == "fused-i2-b8-d500"


def test_process_cpu_seconds_counts_this_process_and_skips_an_exited_one():
    gone = subprocess.Popen(["true"])
    gone.wait()
    before = process_cpu_seconds([os.getpid(), gone.pid])
    end = time.process_time() + 0.3
    while time.process_time() < end:  # 0.3 s of CPU, whatever the machine's load
        pass
    used = process_cpu_seconds([os.getpid(), gone.pid]) - before
    assert 0.25 <= used <= 1.0
