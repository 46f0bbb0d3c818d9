"""Served benchmarks: the Triton ensemble over HTTP and gRPC at several concurrencies.

Through the one client, `rgalign.serve.client.AsyncRgalignClient` (``tritonclient.http.aio`` /
``tritonclient.grpc.aio``): ``concurrency`` coroutines each send one request (batch 1: one JSON object of
raw features) and wait for its answer, back to back, for a time budget. Latency per request and
throughput (answers / s over the level's wall time) per concurrency level; with dynamic
batching on the step models, throughput should grow with concurrency (SPEC §8: 3x at 16 vs 1).

The request's shape follows the model's metadata: ``features`` is ``[B, 1]`` when the model
has a batch dimension and a per-item dim of 1, ``[B]`` when its dims are ``[-1]``.

perf_analyzer, where present (on PATH, beside the interpreter, or inside a tritonclient wheel),
is run too with valid JSON features (`perf_analyzer_input`); absent, it is recorded as such.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


from rgalign.bench.timing import Budget, summarize
from rgalign.progress import first_line
from rgalign.serve.client import MODEL, AsyncRgalignClient, grpc_url_for, host_port

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


# ---- perf_analyzer ---------------------------------------------------------------------------------


def find_perf_analyzer() -> tuple[Path | None, str]:
    """(binary, where it was found) or (None, why not)."""
    on_path = shutil.which("perf_analyzer")
    if on_path:
        return Path(on_path), "PATH"
    beside = Path(sys.executable).parent / "perf_analyzer"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside, "the interpreter's bin"
    try:
        import tritonclient

        root = Path(tritonclient.__file__).parent
        for cand in (root / "bin" / "perf_analyzer", root.parent / "bin" / "perf_analyzer"):
            if cand.is_file() and os.access(cand, os.X_OK):
                return cand, "the tritonclient wheel"
    except ImportError:
        pass
    return None, ("perf_analyzer is not installed: tritonclient wheels after 2.51 no longer ship it and the "
                  "PyPI perf-analyzer needs glibc 2.38; use a Triton SDK container or tritonclient 2.51's binary")


def perf_analyzer_input(records: Sequence[Mapping[str, Any]], dims: Sequence[int]) -> dict[str, Any]:
    """perf_analyzer's ``--input-data`` JSON: one entry per record (cycled by perf_analyzer)."""
    per_item = [json.dumps(r) for r in records]
    if len(dims) >= 2:
        return {"data": [{"features": [s]} for s in per_item]}
    return {"data": [{"features": {"content": [s], "shape": [1]}} for s in per_item]}


def _pa_env() -> dict[str, str]:
    """The tritonclient 2.51 binary needs libb64 / libcudart: the nvidia-pytriton libs have them."""
    env = dict(os.environ)
    try:
        from rgalign.serve.server import wheel_dirs

        libs = str(wheel_dirs()[1])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libs, env.get("LD_LIBRARY_PATH")) if p)
    except Exception:  # noqa: BLE001 - no pytriton: run with the environment as is
        pass
    return env


def run_perf_analyzer(url: str, grpc_url: str | None, records: Sequence[Mapping[str, Any]],
                      dims: Sequence[int], concurrencies: Sequence[int], quick: bool,
                      model: str = MODEL) -> dict[str, Any]:
    binary, where = find_perf_analyzer()
    if binary is None:
        return {"status": "SKIPPED", "reason": where}
    results: dict[str, Any] = {"status": "OK", "binary": os.fspath(binary), "found_in": where, "runs": []}
    interval_ms = 1000 if quick else 5000
    with tempfile.TemporaryDirectory(prefix="rgalign-pa-") as tmp:
        data = Path(tmp) / "input.json"
        data.write_text(json.dumps(perf_analyzer_input(records[:64], dims)), encoding="utf-8")
        for protocol, u in (("http", "%s:%d" % host_port(url)), ("grpc", grpc_url or grpc_url_for(url))):
            for c in concurrencies:
                report = Path(tmp) / f"{protocol}-{c}.csv"
                cmd = [os.fspath(binary), "-m", model, "-u", u, "-i", protocol, "--input-data", os.fspath(data),
                       "--concurrency-range", f"{c}:{c}", "--measurement-interval", str(interval_ms),
                       "-f", os.fspath(report)]
                try:
                    proc = subprocess.run(cmd, env=_pa_env(), capture_output=True, text=True,
                                          timeout=60 if quick else 180)
                except (OSError, subprocess.TimeoutExpired) as e:
                    results["runs"].append({"protocol": protocol, "concurrency": c, "status": "FAIL",
                                            "reason": first_line(e, typed=True, limit=300)})
                    continue
                if proc.returncode != 0 or not report.is_file():
                    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                    results["runs"].append({"protocol": protocol, "concurrency": c, "status": "FAIL",
                                            "reason": f"exit {proc.returncode}: {' | '.join(tail)[:400]}"})
                    continue
                results["runs"].append({"protocol": protocol, "concurrency": c, "status": "OK",
                                        **parse_pa_csv(report.read_text(encoding="utf-8"))})
    if results["runs"] and all(r["status"] != "OK" for r in results["runs"]):
        results["status"] = "FAIL"
    return results


def parse_pa_csv(text: str) -> dict[str, Any]:
    """perf_analyzer's CSV (latencies in microseconds) -> throughput and p50/p95/p99 in ms."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        return {"raw": text[:500]}
    r = rows[-1]
    out: dict[str, Any] = {}
    if "Inferences/Second" in r:
        out["throughput"] = float(r["Inferences/Second"])
    for key in ("p50", "p90", "p95", "p99"):
        col = f"{key} latency"
        if col in r and r[col]:
            out[f"{key}_ms"] = float(r[col]) / 1e3
    return out
