"""Served benchmarks: the Triton ensemble over HTTP and gRPC at several concurrencies.

Through the one client, `rgalign.serve.client.AsyncRgalignClient` (``tritonclient.http.aio`` /
``tritonclient.grpc.aio``): ``concurrency`` coroutines each send one request (batch 1: one JSON object of
raw features) and wait for its answer, back to back, for a time budget. Latency per request and
throughput (answers / s over the level's wall time) per concurrency level; with dynamic
batching on the step models, throughput should grow with concurrency (SPEC §8: 3x at 16 vs 1).

The request's shape follows the model's metadata: ``features`` is ``[B, 1]`` when the model
has a batch dimension and a per-item dim of 1, ``[B]`` when its dims are ``[-1]``.

This client is `rgalign bench`'s fallback: NVIDIA's perf_analyzer (`rgalign.bench.perf_analyzer`)
measures the served figures wherever it runs, and ``served.source`` says which produced them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any


from rgalign.bench.timing import Budget, summarize
from rgalign.progress import first_line
from rgalign.serve.client import MODEL, AsyncRgalignClient, grpc_url_for

CONCURRENCIES = (1, 2, 4, 8, 16)
QUICK_CONCURRENCIES = (1, 4, 16)


async def _timed(client: AsyncRgalignClient, record: Mapping[str, Any]) -> float:
    """Seconds one request of one record takes, answer included."""
    t = time.perf_counter()
    await client.rank([record])
    return time.perf_counter() - t


async def _level(client: AsyncRgalignClient, records: Sequence[Mapping[str, Any]], concurrency: int,
                 budget: Budget) -> dict[str, Any]:
    """One concurrency level: ``concurrency`` workers until the time budget or max requests."""
    lat: list[float] = []
    max_requests = max(budget.max_reps, budget.min_reps * concurrency)
    counter = iter(range(10**9))  # request numbers, shared by the workers (one event loop: no lock)

    async def worker(deadline: float) -> None:
        while True:
            i = next(counter)
            if i >= max_requests or (time.perf_counter() >= deadline and len(lat) >= budget.min_reps):
                return
            lat.append(await _timed(client, records[i % len(records)]))

    # warm-up at this level: the dynamic batcher and the instances see this concurrency first
    await asyncio.gather(*(_timed(client, records[i % len(records)])
                           for i in range(max(budget.warmup, 1) * concurrency)))
    start = time.perf_counter()
    await asyncio.gather(*(worker(start + budget.seconds) for _ in range(concurrency)))
    return summarize(lat, 1, time.perf_counter() - start).to_dict()


async def _protocol(protocol: str, url: str, model: str, records: Sequence[Mapping[str, Any]],
                    concurrencies: Sequence[int], budget: Budget) -> dict[str, Any]:
    try:
        client = AsyncRgalignClient(url, protocol=protocol, model=model, timeout=None)
    except Exception as e:  # noqa: BLE001 - a missing client extra is a recorded fact
        return {"status": "SKIPPED", "url": url, "reason": first_line(e, typed=True, limit=300), "levels": []}
    try:
        try:
            meta = await client.describe()
        except Exception as e:  # noqa: BLE001
            return {"status": "FAIL", "url": url, "reason": first_line(e, typed=True, limit=300), "levels": []}
        levels = []
        for c in concurrencies:
            try:
                levels.append({"concurrency": c, "status": "OK", **(await _level(client, records, c, budget))})
            except Exception as e:  # noqa: BLE001 - a failed request ends this level, not the run
                levels.append({"concurrency": c, "status": "FAIL", "reason": first_line(e, typed=True, limit=300)})
        return {"status": "OK", "url": url, **meta, "levels": levels}
    finally:
        try:
            await client.close()
        except Exception:  # noqa: BLE001
            pass


def bench_served(url: str, records: Sequence[Mapping[str, Any]], budget: Budget,
                 concurrencies: Sequence[int] = CONCURRENCIES, grpc_url: str | None = None,
                 model: str = MODEL) -> dict[str, Any]:
    """``{"http": {...levels...}, "grpc": {...}}`` for the ensemble at ``url`` (HTTP) and
    ``grpc_url`` (default: HTTP port + 1)."""
    grpc_url = grpc_url or grpc_url_for(url)
    out = {}
    for protocol, u in (("http", url), ("grpc", grpc_url)):
        out[protocol] = asyncio.run(_protocol(protocol, u, model, records, concurrencies, budget))
    out["model"] = model
    out["request"] = "batch 1: one JSON object of raw features per request"
    return out


def level(served: Mapping[str, Any] | None, protocol: str, concurrency: int) -> dict[str, Any] | None:
    """The OK level of ``protocol`` at ``concurrency``, or None."""
    if not served:
        return None
    for lv in (served.get(protocol) or {}).get("levels", []):
        if lv.get("concurrency") == concurrency and lv.get("status") == "OK":
            return lv
    return None
