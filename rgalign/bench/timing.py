"""Timing one callable: warm-up, then repeat until enough calls *or* a time budget, and summarise
as p50 / p95 / p99 latency and throughput.

    budget = Budget(warmup=3, min_reps=10, max_reps=200, seconds=2.0)
    t = time_calls(lambda: runner(feeds), items=8, budget=budget)   # -> Timing
    t.p50_ms, t.throughput                                          # ms per call, items per second

Adaptive on purpose: a 0.3 ms ranker call gets its ``max_reps`` in a fraction of a second, a
100 ms eager PyTorch call stops at the time budget (but never below ``min_reps``), so a full run
stays bounded on a slow machine and every figure says how many calls it is the median of.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Budget:
    """How long one measured case may run."""

    warmup: int = 5  # first calls pay allocation, lazy init and (ORT) arena growth
    min_reps: int = 20  # fewer makes p95 meaningless
    max_reps: int = 300  # enough for a stable p99 on a fast case
    seconds: float = 3.0  # per case: 3 shapes x 3 batches x ~8 engines stays within minutes
    # a case whose calls take seconds (a stalled thread pool, a huge batch) stops here even short
    # of min_reps, with at least 3 calls: one pathological case must not hold the run for minutes
    hard_seconds: float = 20.0

    @classmethod
    def quick(cls) -> Budget:
        """``--quick``: a smoke run, numbers indicative only."""
        return cls(warmup=2, min_reps=5, max_reps=40, seconds=0.4, hard_seconds=4.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Timing:
    """Latencies of ``n`` timed calls of ``items`` requests each (ms), and items per second
    over the wall time of those calls."""

    n: int
    items: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    throughput: float  # items / s

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def summarize(latencies_s: Sequence[float], items: int, wall_s: float | None = None) -> Timing:
    """Percentiles of ``latencies_s`` (seconds); throughput = items x calls / ``wall_s`` (default:
    the sum of the latencies, i.e. calls back to back)."""
    if not latencies_s:
        raise ValueError("no latencies to summarise")
    lat = np.asarray(latencies_s, dtype=np.float64) * 1e3
    wall = float(wall_s) if wall_s is not None else float(lat.sum() / 1e3)
    p50, p95, p99 = np.percentile(lat, [50, 95, 99])
    return Timing(
        n=len(lat), items=int(items), p50_ms=float(p50), p95_ms=float(p95), p99_ms=float(p99),
        mean_ms=float(lat.mean()), min_ms=float(lat.min()),
        throughput=float(items * len(lat) / wall) if wall > 0 else float("nan"),
    )


def time_calls(fn: Callable[[], Any], items: int, budget: Budget) -> Timing:
    """Warm ``fn`` up, then time calls until ``max_reps`` or ``seconds`` (at least ``min_reps``,
    unless ``hard_seconds`` pass first)."""
    t0 = time.perf_counter()
    for _ in range(budget.warmup):
        fn()
        if time.perf_counter() - t0 >= budget.seconds:  # calls this slow are warm after one
            break
    lat: list[float] = []
    start = time.perf_counter()
    while len(lat) < budget.max_reps:
        t = time.perf_counter()
        fn()
        lat.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
        if len(lat) >= budget.min_reps and elapsed >= budget.seconds:
            break
        if len(lat) >= 3 and elapsed >= budget.hard_seconds:
            break
    return summarize(lat, items, time.perf_counter() - start)
