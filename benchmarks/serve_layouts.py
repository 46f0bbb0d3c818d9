"""The README's serving table: both layouts, with and without Triton's response cache, against the
in-process `Pipeline`, measured in one run with NVIDIA's perf_analyzer.

    .venv/bin/python benchmarks/serve_layouts.py EXPORT [--precision int8] [--threads 1]
        [--interval-ms 2000] [--out benchmarks/results/serve_layouts.json]

In this order, on the same machine:

1. in-process `Pipeline` (ONNX Runtime, ``--threads``): p50 / p99 of one request (batch 1) over
   the requests, and the best batched throughput over batch sizes 1-16 and 1 or 2 threads;
2. for each layout (`rgalign deploy --layout fused|ensemble`, the deploy defaults and
   ``--threads``), a server without and with a 64 MiB response cache (``--cache-mb 64``), all
   four running; in ``--rounds`` rounds, every server in turn measured over HTTP by
   perf_analyzer at concurrency 1, 4 and 16 on a workload where half the requests repeat one of
   8 hot requests (the other half unique), and at 16 on all-unique requests, with the in-process
   batch-1 latency measured again before each c=1 run: on a machine whose load drifts, every
   path sees the same drift; medians over the rounds. The cache's hit rate from the metrics
   endpoint; RSS and PSS of each server and its stubs;
3. the in-process batched throughput again (the best of both is kept).

Figures on a shared machine move with its load (``load_average`` is recorded before and after):
compare them within one run only. Requests are the source dataset's test requests.
"""

from __future__ import annotations

import argparse
import contextlib
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
from rgalign.inference import Pipeline
from rgalign.serve.server.cache import read_stats, server_args
from rgalign.serve.repository.deploy import DeployOptions, deploy
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


def _median(values: list[float]) -> float:
    return round(float(np.median(values)), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("export", type=Path)
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--interval-ms", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--layouts", default="fused,ensemble")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_layouts.json"))
    args = ap.parse_args()

    binary, about = pa.available()
    if binary is None:
        raise SystemExit(f"perf_analyzer cannot run here: {about}")
    records = resolve_target(args.export, None).records
    settings = pa.Settings(interval_ms=args.interval_ms)
    layouts = args.layouts.split(",")
    result: dict = {"export": os.fspath(args.export.resolve()), "precision": args.precision,
                    "threads": args.threads, "rounds": args.rounds, "engine": about, "host": platform.node(),
                    "cpus": os.cpu_count(), "load_average_before": os.getloadavg(),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    print("in-process ...", flush=True)
    pipe = Pipeline.from_export(args.export, args.precision, threads=args.threads)
    pipes = {t: (pipe if t == args.threads else Pipeline.from_export(args.export, args.precision, threads=t))
             for t in sorted({1, 2, args.threads})}

    def batched() -> dict[str, float]:
        return {f"t{t}-b{b}": inprocess_throughput(p, records, b) for t, p in pipes.items() for b in BATCHES}

    inproc: dict = {"batch1": [], "throughput_before": batched()}
    served: dict = {}
    with tempfile.TemporaryDirectory(prefix="rgalign-layouts-") as tmp, contextlib.ExitStack() as stack:
        servers = {}
        for layout in layouts:
            repo = Path(tmp) / layout
            deploy(args.export, repo, DeployOptions(layout=layout, precision=args.precision, threads=args.threads))
            for cache_mb in (0, CACHE_MB):
                key = f"{layout}{'+cache' if cache_mb else ''}"
                srv = TritonServer(repo, log_file=Path(tmp) / f"{key}.log", extra_args=server_args(cache_mb))
                servers[key] = stack.enter_context(srv)
                served[key] = {"layout": layout, "cache_mb": cache_mb, "runs": {}, "cache": {}}
        # Rounds: every configuration and the in-process pipeline in turn, so that each sees the
        # same drift of the machine's load; medians over the rounds.
        for r in range(args.rounds):
            for c in CONCURRENCIES:
                for key, srv in servers.items():
                    print(f"round {r}, c={c}, {key} ...", flush=True)
                    if c == 1:
                        inproc["batch1"].append(inprocess_latency(pipe, records, n=200, warmup=5))
                    before = read_stats(srv.metrics_url)
                    data = pa.input_data(records, n=40_000, repeated=0.5, seed=c + 100 * r, tag=f"{key}-r{r}-c{c}-")
                    got = pa.run(binary, srv.http_address, data, concurrency=c, settings=settings)
                    served[key]["runs"].setdefault(f"c{c}", []).append(got)
                    served[key]["cache"].setdefault(f"c{c}", []).append((read_stats(srv.metrics_url) - before).to_dict())
            for key, srv in servers.items():
                print(f"round {r}, unique c=16, {key} ...", flush=True)
                before = read_stats(srv.metrics_url)
                data = pa.input_data(records, n=40_000, repeated=0.0, tag=f"{key}-r{r}-unique-")
                served[key]["runs"].setdefault("unique_c16", []).append(
                    pa.run(binary, srv.http_address, data, concurrency=16, settings=settings))
                served[key]["cache"].setdefault("unique_c16", []).append((read_stats(srv.metrics_url) - before).to_dict())
        for key, srv in servers.items():
            served[key]["memory"] = server_memory_mb(srv)
    inproc["throughput_after"] = batched()
    result["load_average_after"] = os.getloadavg()

    inproc["p50_ms"] = _median([x["p50_ms"] for x in inproc["batch1"]])
    inproc["p99_ms"] = _median([x["p99_ms"] for x in inproc["batch1"]])
    inproc["best_throughput"] = max([*inproc["throughput_before"].values(), *inproc["throughput_after"].values()])
    result["inprocess"] = inproc
    table = {}
    for key, row in served.items():
        runs = row["runs"]
        hits = {k: sum(x["hits"] for x in v) / max(1, sum(x["hits"] + x["misses"] for x in v)) if row["cache_mb"] else None
                for k, v in row["cache"].items()}
        table[key] = {
            "p50_c1_ms": _median([x["p50_ms"] for x in runs["c1"]]),
            "p99_c1_ms": _median([x["p99_ms"] for x in runs["c1"]]),
            **{f"rps_c{c}": _median([x["throughput"] for x in runs[f"c{c}"]]) for c in CONCURRENCIES},
            "rps_unique_c16": _median([x["throughput"] for x in runs["unique_c16"]]),
            "hit_rate_50pct_c16": hits.get("c16"), "hit_rate_unique_c16": hits.get("unique_c16"),
            "unstable_runs": sum(not x["stable"] for v in runs.values() for x in v),
            "memory": row["memory"],
        }
    result["served"] = served
    result["table"] = table
    result["ratios"] = {
        **{f"{k}_p50_above_inprocess_ms": round(v["p50_c1_ms"] - inproc["p50_ms"], 3) for k, v in table.items()},
        "best_served_vs_inprocess_batched": round(
            max(max(v["rps_c16"], v["rps_c4"]) for k, v in table.items() if "cache" not in k) / inproc["best_throughput"], 3),
        **{f"{layout}_cache_vs_none_50pct_c16": round(table[f"{layout}+cache"]["rps_c16"] / table[layout]["rps_c16"], 3)
           for layout in layouts},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({"inprocess_p50_ms": inproc["p50_ms"], "inprocess_best_rps": inproc["best_throughput"],
                      "table": table, "ratios": result["ratios"]}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
