"""Served vs in-process latency and throughput of the deployed ensemble, measured in one run.

For each precision: deploy EXPORT (python backend) into a temporary repository, start the
embedded tritonserver on free ports, then measure on the same machine, one after the other:

- p50 / p99 latency of one request (batch 1) through the in-process `Pipeline` (ONNX Runtime)
  and through the Triton ensemble over gRPC and HTTP (blocking clients), interleaved request by
  request so that the three paths see the same machine load;
- throughput (requests/s, batch 1) at concurrency 1 and 8 over gRPC (one client per thread).

Requests are the source dataset's test-split requests (raw feature dicts), cycled. Usage:

    .venv/bin/python benchmarks/serve_latency.py EXPORT [--precisions fp32,int8]
        [--requests 300] [--seconds 5] [--out benchmarks/results/serve_latency.json]

Figures on a shared machine move with its load: compare them within one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def load_records(export: Path, n: int) -> list[dict]:
    from rgalign.artifacts.manifest import read_manifest
    from rgalign.data.encoders import FeatureEncoders
    from rgalign.inference.records import dataset_records

    manifest = read_manifest(export)
    enc = FeatureEncoders.from_json(export / manifest["serving"]["encoders"])
    raw = dataset_records(manifest["source"]["data"]["path"], enc, limit=None)
    return [raw[i % len(raw)] for i in range(n)]


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "n": len(seconds),
    }


def interleaved_latency(calls: dict, records: list[dict], warmup: int = 20) -> dict[str, dict]:
    """Per record, each path in turn (in-process, gRPC, HTTP, ...): on a machine whose load
    drifts, every path sees the same load, so their difference is the serving cost."""
    for r in records[:warmup]:
        for call in calls.values():
            call(r)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for r in records:
        for name, call in calls.items():
            t = time.perf_counter()
            call(r)
            times[name].append(time.perf_counter() - t)
    return {name: percentiles(ts) for name, ts in times.items()}


def throughput(url: str, records: list[dict], concurrency: int, seconds: float) -> dict[str, float]:
    from rgalign.serve.client import RgalignClient

    counts = [0] * concurrency
    errors: list[str] = []
    start = threading.Barrier(concurrency + 1)
    stop_at: list[float] = []

    def worker(i: int) -> None:
        with RgalignClient(url, protocol="grpc") as client:
            client.rank([records[i]], k=3)  # connect before the clock starts
            start.wait()
            n = 0
            while time.perf_counter() < stop_at[0]:
                try:
                    client.rank([records[(i * 7919 + n) % len(records)]], k=3)
                    counts[i] += 1
                except Exception as e:  # noqa: BLE001 - reported in the result
                    errors.append(str(e))
                n += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    stop_at.append(time.perf_counter() + 1e9)
    start.wait()
    t0 = time.perf_counter()
    stop_at[0] = t0 + seconds
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    return {
        "concurrency": concurrency,
        "requests": sum(counts),
        "seconds": round(elapsed, 2),
        "rps": round(sum(counts) / elapsed, 1),
        "errors": len(errors),
    }


def run_precision(export: Path, precision: str, records: list[dict], seconds: float, threads: int) -> dict:
    from rgalign.inference.pipeline import Pipeline
    from rgalign.serve.client import RgalignClient
    from rgalign.serve.repository.deploy import DeployOptions, deploy
    from rgalign.serve.server import TritonServer

    result: dict = {"precision": precision}
    pipe = Pipeline.from_export(export, precision, threads=threads or None)
    with tempfile.TemporaryDirectory(prefix="rgalign-bench-") as tmp:
        repo = Path(tmp) / "repo"
        deploy(export, repo, DeployOptions(precision=precision, threads=threads))
        with TritonServer(repo, log_file=Path(tmp) / "server.log") as server:
            result["server_ready_s"] = round(server.ready_seconds, 2)
            grpc = RgalignClient(server.grpc_url, protocol="grpc")
            http = RgalignClient(server.http_address, protocol="http")
            try:
                result.update(interleaved_latency({
                    "in_process": lambda r: pipe([r], k=3),
                    "triton_grpc": lambda r: grpc.rank([r], k=3),
                    "triton_http": lambda r: http.rank([r], k=3),
                }, records))  # fmt: skip
            finally:
                grpc.close()
                http.close()
            result["throughput"] = [
                throughput(server.grpc_url, records, c, seconds) for c in (1, 8)
            ]
    result["grpc_p50_overhead_ms"] = round(
        result["triton_grpc"]["p50_ms"] - result["in_process"]["p50_ms"], 3
    )
    tp = {t["concurrency"]: t["rps"] for t in result["throughput"]}
    result["throughput_ratio_8_vs_1"] = round(tp[8] / tp[1], 2) if tp[1] else None
    return result


def markdown(results: list[dict]) -> str:
    lines = [
        "| precision | in-process p50 / p99 ms | Triton gRPC p50 / p99 ms | Triton HTTP p50 / p99 ms "
        "| gRPC p50 overhead ms | rps @1 | rps @8 | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        tp = {t["concurrency"]: t for t in r["throughput"]}
        lines.append(
            f"| {r['precision']} | {r['in_process']['p50_ms']:.2f} / {r['in_process']['p99_ms']:.2f} "
            f"| {r['triton_grpc']['p50_ms']:.2f} / {r['triton_grpc']['p99_ms']:.2f} "
            f"| {r['triton_http']['p50_ms']:.2f} / {r['triton_http']['p99_ms']:.2f} "
            f"| {r['grpc_p50_overhead_ms']:+.2f} | {tp[1]['rps']:.0f} | {tp[8]['rps']:.0f} "
            f"| {r['throughput_ratio_8_vs_1']}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path)
    parser.add_argument("--precisions", default="fp32,int8")
    parser.add_argument("--requests", type=int, default=300, help="latency samples per path")
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput point")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: default)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_latency.json"))
    args = parser.parse_args()

    records = load_records(args.export, args.requests)
    load_before = os.getloadavg()
    results = [
        run_precision(args.export, p.strip(), records, args.seconds, args.threads)
        for p in args.precisions.split(",")
    ]
    report = {
        "command": "python benchmarks/serve_latency.py " + " ".join(
            [str(args.export), "--precisions", args.precisions, "--requests", str(args.requests),
             "--seconds", str(args.seconds), "--threads", str(args.threads)]
        ),
        "machine": {
            "platform": platform.platform(), "cpus": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "export": str(args.export.resolve()),
        "results": results,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "note": "batch 1, k=3; one machine, one run; in-process = rgalign.inference.Pipeline (ONNX Runtime)",
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(results))
    print(f"load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}; wrote {args.out}")


if __name__ == "__main__":
    main()
