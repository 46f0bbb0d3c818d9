"""A deployed repository served from cold, as a user runs it: `rgalign serve REPO` started as its
own process, polled until the model is ready, asked one request, then a few more, then stopped
with Ctrl-C (SIGINT). For the Qwen3-0.6B-shape export (issue 15) and any other.

    python benchmarks/serve_once.py REPO [--requests 20] [--out results/serve_qwen06.json]

Records: the load time (process start -> `rgalign` model ready), the first answer's latency and
the median of the next ``requests`` (batch 1, HTTP), the resident memory of the server's process
tree (the `rgalign serve` supervisor, `tritonserver`, its python-backend stubs: each process's
RSS, their sum, and the largest sum sampled every 0.2 s while loading and answering; shared
pages are counted once per process, so the sum is an upper bound), and the stop time. The
requests are the test split of the dataset the export was made from (the repository's
manifest names it), else one synthetic request.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path


def _tree_rss_mb(pid: int) -> dict[str, float]:
    import psutil

    out: dict[str, float] = {}
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return out
    for p in procs:
        try:
            name = os.path.basename((p.cmdline() or [p.name()])[0])
            out[f"{name}[{p.pid}]"] = round(p.memory_info().rss / 2**20, 1)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def _records(repo: Path) -> tuple[list[dict], str]:
    from rgalign.data.encoders import FeatureEncoders
    from rgalign.inference.records import records_for

    manifest = json.loads((repo / "manifest.json").read_text())
    enc = FeatureEncoders.from_json(next(repo.glob("*/1/encoders.json")))
    data = (manifest.get("source", {}).get("data") or {}).get("path")
    return records_for(enc, data, None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("repo", type=Path)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--start-timeout", type=float, default=900.0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from rgalign.serve.client import RgalignClient
    from rgalign.serve.server.binary import free_ports

    records, source = _records(args.repo)
    http, grpc, metrics = free_ports("127.0.0.1", 3)
    cmd = [sys.executable, "-m", "rgalign", "serve", os.fspath(args.repo), "--http-port", str(http),
           "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--start-timeout", str(args.start_timeout)]
    result: dict = {"repo": os.fspath(args.repo), "command": "rgalign " + " ".join(cmd[3:]), "records": source}
    deploy = json.loads((args.repo / "deploy.json").read_text())
    result["deployment"] = {"layout": deploy.get("layout"), "options": deploy.get("options")}
    peak = {"sum_mb": 0.0}
    stop_sampling = threading.Event()

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def sample() -> None:
        while not stop_sampling.is_set():
            total = sum(_tree_rss_mb(proc.pid).values())
            if total > peak["sum_mb"]:
                peak["sum_mb"] = round(total, 1)
            stop_sampling.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    client = RgalignClient(f"127.0.0.1:{http}", timeout=120.0)
    try:
        while not client.is_ready():
            if proc.poll() is not None:
                raise SystemExit(f"rgalign serve exited with {proc.returncode}:\n{proc.stdout.read()[-3000:]}")
            if time.perf_counter() - t0 > args.start_timeout:
                raise SystemExit(f"not ready after {args.start_timeout} s")
            time.sleep(0.2)
        result["ready_s"] = round(time.perf_counter() - t0, 2)
        result["rss_ready_mb"] = _tree_rss_mb(proc.pid)
        t = time.perf_counter()
        first = client.rank(records[:1], k=3)
        result["first_answer_ms"] = round((time.perf_counter() - t) * 1e3, 1)
        result["start_to_first_answer_s"] = round(time.perf_counter() - t0, 2)
        result["first_answer"] = {"intent_ids": list(first[0].intent_ids),
                                  "scores": [round(float(s), 5) for s in first[0].scores]}
        times = []
        for i in range(args.requests):
            t = time.perf_counter()
            client.rank([records[(i + 1) % len(records)]], k=3)
            times.append((time.perf_counter() - t) * 1e3)
        result["next_requests"] = len(times)
        result["p50_ms"] = round(statistics.median(times), 1) if times else None
        result["rss_after_mb"] = _tree_rss_mb(proc.pid)
        result["rss_after_sum_mb"] = round(sum(result["rss_after_mb"].values()), 1)
    finally:
        client.close()
        t = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        result["stop_s"] = round(time.perf_counter() - t, 2)
        result["exit_code"] = proc.returncode
        stop_sampling.set()
        sampler.join()
        result["rss_peak_sum_mb"] = peak["sum_mb"]
        text = json.dumps(result, indent=1)
        print(text)
        if args.out:
            args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
