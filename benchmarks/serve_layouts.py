"""The README's serving table: both layouts, with and without Triton's response cache, against the
in-process `Pipeline`, measured in one run with NVIDIA's perf_analyzer.

    .venv/bin/python benchmarks/serve_layouts.py EXPORT [--precision int8] [--threads 1]
        [--interval-ms 2000] [--out benchmarks/results/serve_layouts.json]

In this order, on the same machine:

1. in-process `Pipeline` (ONNX Runtime, ``--threads``): p50 / p99 of one request (batch 1) over
   the requests, and the best batched throughput over batch sizes 1-16 and 1 or 2 threads;
2. for each layout (`rgalign deploy --layout fused|ensemble`, the deploy defaults and
   ``--threads``), a server without and with a 64 MiB response cache (``--cache-mb 64``), each
   measured over HTTP by perf_analyzer at concurrency 1, 4 and 16 on a workload where half the
   requests repeat one of 8 hot requests (the other half unique), and at 16 on all-unique
   requests; the cache's hit rate from the metrics endpoint; RSS and PSS of the server and its
   stubs;
3. the in-process batch-1 latency again (the load drifts: both are kept).

Figures on a shared machine move with its load (``load_average`` is recorded before and after):
compare them within one run only. Requests are the source dataset's test requests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from rgalign.bench import perf_analyzer as pa
from rgalign.bench.target import resolve_target
from rgalign.bench.tune import server_memory_mb
from rgalign.export import Pipeline
from rgalign.serve.cache import read_stats, server_args
from rgalign.serve.deploy import DeployOptions, deploy
from rgalign.serve.server import TritonServer

CONCURRENCIES = (1, 4, 16)
BATCHES = (1, 4, 8, 16)
CACHE_MB = 64


def inprocess_latency(pipe: Pipeline, records: list[dict], n: int = 400, warmup: int = 20) -> dict:
    for r in records[:warmup]:
        pipe([r], k=10)
    lat = []
    for i in range(n):
        t = time.perf_counter()
        pipe([records[i % len(records)]], k=10)
        lat.append(time.perf_counter() - t)
    ms = np.asarray(lat) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "n": n}


def inprocess_throughput(pipe: Pipeline, records: list[dict], batch: int, seconds: float = 2.0) -> float:
    pipe(records[:batch], k=10)
    done, i, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        chunk = [records[(i + j) % len(records)] for j in range(batch)]
        pipe(chunk, k=10)
        done += batch
        i += batch
    return round(done / (time.perf_counter() - start), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("export", type=Path)
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--interval-ms", type=int, default=2000)
    ap.add_argument("--layouts", default="fused,ensemble")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_layouts.json"))
    args = ap.parse_args()

    binary, about = pa.available()
    if binary is None:
        raise SystemExit(f"perf_analyzer cannot run here: {about}")
    records = resolve_target(args.export, None).records
    settings = pa.Settings(interval_ms=args.interval_ms)
    result: dict = {"export": os.fspath(args.export.resolve()), "precision": args.precision,
                    "threads": args.threads, "engine": about, "host": platform.node(), "cpus": os.cpu_count(),
                    "load_average_before": os.getloadavg(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    print("in-process ...", flush=True)
    pipe = Pipeline.from_export(args.export, args.precision, threads=args.threads)
    result["inprocess"] = {"batch1": inprocess_latency(pipe, records)}
    batched = {}
    for threads in sorted({1, 2, args.threads}):
        p = pipe if threads == args.threads else Pipeline.from_export(args.export, args.precision, threads=threads)
        for b in BATCHES:
            batched[f"t{threads}-b{b}"] = inprocess_throughput(p, records, b)
    result["inprocess"]["throughput"] = batched
    result["inprocess"]["best_throughput"] = max(batched.values())
    print(json.dumps(result["inprocess"]), flush=True)

    result["served"] = {}
    with tempfile.TemporaryDirectory(prefix="rgalign-layouts-") as tmp:
        for layout in args.layouts.split(","):
            repo = Path(tmp) / layout
            deploy(args.export, repo, DeployOptions(layout=layout, precision=args.precision, threads=args.threads))
            for cache_mb in (0, CACHE_MB):
                key = f"{layout}{'+cache' if cache_mb else ''}"
                print(f"{key} ...", flush=True)
                row: dict = {"layout": layout, "cache_mb": cache_mb, "levels": {}}
                with TritonServer(repo, log_file=Path(tmp) / f"{key}.log", extra_args=server_args(cache_mb)) as srv:
                    before = read_stats(srv.metrics_url)
                    for c in CONCURRENCIES:
                        data = pa.input_data(records, n=40_000, repeated=0.5, seed=c, tag=f"{key}-c{c}-")
                        got = pa.run(binary, srv.http_address, data, concurrency=c, settings=settings)
                        row["levels"][f"c{c}"] = {k: v for k, v in got.items() if k != "composing"} | {
                            "composing": got["composing"]}
                    row["cache_50pct"] = (read_stats(srv.metrics_url) - before).to_dict()
                    mid = read_stats(srv.metrics_url)
                    data = pa.input_data(records, n=40_000, repeated=0.0, tag=f"{key}-unique-")
                    got = pa.run(binary, srv.http_address, data, concurrency=16, settings=settings)
                    row["unique_c16"] = {k: v for k, v in got.items() if k != "composing"}
                    row["cache_unique"] = (read_stats(srv.metrics_url) - mid).to_dict()
                    row["memory"] = server_memory_mb(srv)
                result["served"][key] = row
                lv = row["levels"]
                print(f"  p50 c1 {lv['c1']['p50_ms']:.2f} p99 {lv['c1']['p99_ms']:.2f}  req/s "
                      f"{lv['c1']['throughput']:.0f}/{lv['c4']['throughput']:.0f}/{lv['c16']['throughput']:.0f}  "
                      f"unique c16 {row['unique_c16']['throughput']:.0f}  hit rate {row['cache_50pct']['hit_rate']}  "
                      f"mem {row['memory']}", flush=True)

    result["inprocess"]["batch1_after"] = inprocess_latency(pipe, records)
    result["load_average_after"] = os.getloadavg()
    base = (result["inprocess"]["batch1"]["p50_ms"] + result["inprocess"]["batch1_after"]["p50_ms"]) / 2
    served = result["served"]
    result["ratios"] = {
        "inprocess_p50_ms_mean": round(base, 3),
        **{f"{k}_p50_above_inprocess_ms": round(v["levels"]["c1"]["p50_ms"] - base, 3) for k, v in served.items()},
        "best_served_vs_inprocess_batched": round(
            max(v["levels"]["c16"]["throughput"] for k, v in served.items() if "cache" not in k)
            / result["inprocess"]["best_throughput"], 3),
        **{f"{layout}_cache_vs_none_50pct_c16": round(
            served[f"{layout}+cache"]["levels"]["c16"]["throughput"] / served[layout]["levels"]["c16"]["throughput"], 3)
           for layout in args.layouts.split(",")},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["ratios"], indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
