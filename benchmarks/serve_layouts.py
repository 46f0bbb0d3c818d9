"""The README's serving table: both layouts, with and without Triton's response cache, against the
in-process `Pipeline`, measured in one run with NVIDIA's perf_analyzer.

    .venv/bin/python benchmarks/serve_layouts.py EXPORT [--precision int8] [--threads 1]
        [--interval-ms 2000] [--throughput-configs fused:2:2000] [--out benchmarks/results/serve_layouts.json]

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
   endpoint; RSS and PSS of each server and its stubs; the cores the server (with its stubs)
   and perf_analyzer each kept busy during every run (on 2 cores the load generator takes its
   share from the server);
   ``--floor`` (default) adds an echo model with the fused layout's contract and no pipeline,
   the cost of HTTP, scheduling and the stub round trip alone;
   ``--throughput-configs`` adds deployments measured at c=16 only (default: fused with 2
   instances and a 2 ms queue delay, the throughput end of `rgalign tune`'s frontier): the
   saturation ratio takes the best configuration, named in ``ratios``;
3. the in-process batched throughput again (the best of both is kept).

Figures on a shared machine move with its load (``load_average`` is recorded before and after):
compare them within one run only. Requests are the source dataset's test requests.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from rgalign.bench import perf_analyzer as pa
from rgalign.bench.target import resolve_target
from rgalign.bench.tune import process_cpu_seconds, server_memory_mb, server_pids
from rgalign.inference import Pipeline
from rgalign.serve.server.cache import read_stats, server_args
from rgalign.serve.repository.deploy import DeployOptions, deploy
from rgalign.serve.server import TritonServer

# The floor under any python-backend layout: the fused deployment's config (same inputs,
# outputs, batching) with a model.py that reads each request's input and answers k fixed
# intents: HTTP, the scheduler, the stub round trip and the BYTES tensors, and no pipeline.
ECHO_MODEL = """import numpy as np
import triton_python_backend_utils as pb_utils

IDS = np.array([[b"intent-%d" % i for i in range(10)]], dtype=object)
SCORES = np.linspace(1.0, 0.1, 10, dtype=np.float32)[None, :]


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            n = pb_utils.get_input_tensor_by_name(request, "features").as_numpy().shape[0]
            out.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("intent_ids", np.repeat(IDS, n, axis=0)),
                pb_utils.Tensor("scores", np.repeat(SCORES, n, axis=0))]))
        return out
"""

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


def inprocess_throughput(pipe: Pipeline, records: list[dict], batch: int, seconds: float = 2.0) -> tuple[float, float]:
    """(requests / s, cores this process kept busy) over ``seconds`` of back-to-back batches."""
    pipe(records[:batch], k=10)
    done, i, start, cpu = 0, 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        chunk = [records[(i + j) % len(records)] for j in range(batch)]
        pipe(chunk, k=10)
        done += batch
        i += batch
    wall = time.perf_counter() - start
    return round(done / wall, 1), round((time.process_time() - cpu) / wall, 3)


def measured(binary, srv, data, concurrency: int, settings) -> dict:
    """One perf_analyzer run, with the cores the server (its process and stubs) and the load
    generator kept busy over it: on 2 cores the generator's share is not the server's to use."""
    pids = server_pids(srv)
    cpu0, child0, t0 = process_cpu_seconds(pids), resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    got = pa.run(binary, srv.http_address, data, concurrency=concurrency, settings=settings)
    cpu1, child1, wall = process_cpu_seconds(pids), resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter() - t0
    got["server_cores"] = round((cpu1 - cpu0) / wall, 3)
    got["client_cores"] = round((child1.ru_utime + child1.ru_stime - child0.ru_utime - child0.ru_stime) / wall, 3)
    return got


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
    ap.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                    help="also serve an echo model with the fused contract: the python backend's own cost")
    ap.add_argument("--throughput-configs", default="fused:2:2000",
                    help="extra deployments measured at c=16 only, LAYOUT:INSTANCES:QUEUE_DELAY_US,...: "
                         "the throughput end of `rgalign tune`'s frontier ('' for none)")
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

    cores: dict[str, list[float]] = {}

    def batched() -> dict[str, float]:
        out = {}
        for t, p in pipes.items():
            for b in BATCHES:
                out[f"t{t}-b{b}"], used = inprocess_throughput(p, records, b)
                cores.setdefault(f"t{t}-b{b}", []).append(used)
        return out

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
        if args.floor:
            repo = Path(tmp) / "echo"
            deploy(args.export, repo, DeployOptions(layout="fused", precision=args.precision, threads=args.threads))
            (repo / "rgalign" / "1" / "model.py").write_text(ECHO_MODEL, encoding="utf-8")
            servers["echo"] = stack.enter_context(TritonServer(repo, log_file=Path(tmp) / "echo.log"))
            served["echo"] = {"layout": "echo (no pipeline)", "cache_mb": 0, "runs": {}, "cache": {}}
        throughput_only = set()
        for spec in filter(None, args.throughput_configs.split(",")):
            layout, instances, delay = spec.split(":")
            key = f"{layout}-i{instances}-d{delay}"
            repo = Path(tmp) / key
            deploy(args.export, repo, DeployOptions(layout=layout, precision=args.precision, threads=args.threads,
                                                    instances=int(instances), queue_delay_us=int(delay)))
            servers[key] = stack.enter_context(TritonServer(repo, log_file=Path(tmp) / f"{key}.log"))
            served[key] = {"layout": layout, "cache_mb": 0, "instances": int(instances), "queue_delay_us": int(delay),
                           "runs": {}, "cache": {}}
            throughput_only.add(key)
        # Rounds: every configuration and the in-process pipeline in turn, so that each sees the
        # same drift of the machine's load; medians over the rounds.
        for r in range(args.rounds):
            for c in CONCURRENCIES:
                for key, srv in servers.items():
                    if key in throughput_only and c != max(CONCURRENCIES):
                        continue
                    print(f"round {r}, c={c}, {key} ...", flush=True)
                    if c == 1:
                        inproc["batch1"].append(inprocess_latency(pipe, records, n=200, warmup=5))
                    before = read_stats(srv.metrics_url)
                    data = pa.input_data(records, n=40_000, repeated=0.5, seed=c + 100 * r, tag=f"{key}-r{r}-c{c}-")
                    got = measured(binary, srv, data, c, settings)
                    served[key]["runs"].setdefault(f"c{c}", []).append(got)
                    served[key]["cache"].setdefault(f"c{c}", []).append((read_stats(srv.metrics_url) - before).to_dict())
            for key, srv in servers.items():
                print(f"round {r}, unique c=16, {key} ...", flush=True)
                before = read_stats(srv.metrics_url)
                data = pa.input_data(records, n=40_000, repeated=0.0, tag=f"{key}-r{r}-unique-")
                served[key]["runs"].setdefault("unique_c16", []).append(measured(binary, srv, data, 16, settings))
                served[key]["cache"].setdefault("unique_c16", []).append((read_stats(srv.metrics_url) - before).to_dict())
        for key, srv in servers.items():
            served[key]["memory"] = server_memory_mb(srv)
    inproc["throughput_after"] = batched()
    result["load_average_after"] = os.getloadavg()

    inproc["p50_ms"] = _median([x["p50_ms"] for x in inproc["batch1"]])
    inproc["p99_ms"] = _median([x["p99_ms"] for x in inproc["batch1"]])
    inproc["best_throughput"] = max([*inproc["throughput_before"].values(), *inproc["throughput_after"].values()])
    inproc["cores"] = cores
    best = max(inproc["throughput_before"], key=lambda k: max(inproc["throughput_before"][k], inproc["throughput_after"][k]))
    inproc["best_config"] = best
    # CPU time per request: what a request costs whoever runs it, beside the load generator's share
    inproc["best_cpu_ms_per_request"] = round(1e3 * _median(cores[best]) / inproc["best_throughput"], 3)
    result["inprocess"] = inproc
    table = {}
    for key, row in served.items():
        runs = row["runs"]
        hits = {k: sum(x["hits"] for x in v) / max(1, sum(x["hits"] + x["misses"] for x in v)) if row["cache_mb"] else None
                for k, v in row["cache"].items()}
        def med(name: str, field: str) -> float | None:
            return _median([x[field] for x in runs[name]]) if name in runs else None

        table[key] = {
            "p50_c1_ms": med("c1", "p50_ms"),
            "p99_c1_ms": med("c1", "p99_ms"),
            **{f"rps_c{c}": med(f"c{c}", "throughput") for c in CONCURRENCIES},
            "rps_unique_c16": med("unique_c16", "throughput"),
            "server_cores_c16": med("c16", "server_cores"),
            "client_cores_c16": med("c16", "client_cores"),
            "server_cpu_ms_per_request_c16": (round(1e3 * med("c16", "server_cores") / med("c16", "throughput"), 3)
                                              if "c16" in runs else None),
            "hit_rate_50pct_c16": hits.get("c16"), "hit_rate_unique_c16": hits.get("unique_c16"),
            "unstable_runs": sum(not x["stable"] for v in runs.values() for x in v),
            "memory": row["memory"],
        }
    result["served"] = served
    result["table"] = table
    result["ratios"] = {
        **{f"{k}_p50_above_inprocess_ms": round(v["p50_c1_ms"] - inproc["p50_ms"], 3)
           for k, v in table.items() if v["p50_c1_ms"] is not None},
        "best_served_vs_inprocess_batched": round(
            max(max(v["rps_c16"], v["rps_c4"] or 0) for k, v in table.items() if "cache" not in k and k != "echo")
            / inproc["best_throughput"], 3),
        **({f"{k}_p50_above_echo_ms": round(v["p50_c1_ms"] - table["echo"]["p50_c1_ms"], 3)
            for k, v in table.items() if "echo" in table and k != "echo" and v["p50_c1_ms"] is not None}),
        "best_served_config": max((k for k in table if "cache" not in k and k != "echo"),
                                  key=lambda k: table[k]["rps_c16"]),
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
