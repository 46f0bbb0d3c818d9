"""Issue 16's figures, measured against a real supervised tritonserver on 127.0.0.1:

- ``soak``: 8 clients for 60 s, 20% bad requests of every kind (`rgalign.bench.soak`), int8 and
  fp32 deployments (python backend, max batch 16, dynamic batching): good requests failed, good
  answers that differ from the same request sent alone, bad requests not answered with a
  one-line 400, health;
- ``recovery``: under 8 clients, ``kill -9`` of each python-backend stub in turn: time from the
  kill to the first request *sent after it* that succeeds, requests lost, how long health said
  not-ready, the supervisor's reload time;
- ``invariance``: what row-wise int8 costs: served throughput at 8 clients and batch-1 latency
  with ``batch_invariant`` on and off, and top-K changes alone vs batched;
- ``huge``: one request with a 20 MB text field among 4 clients of small requests: its 400 and
  the slowest small request meanwhile;
- ``drain``: ``rgalign serve`` (a subprocess) under 8 clients of batch 16 gets SIGTERM: requests
  completed after the signal, refused (404) and failed otherwise, seconds to exit.

Usage (the export defaults to the test suite's tiny fp32 + int8 export, built in ~10 s):

    PYTHONPATH=. .venv/bin/python benchmarks/reliability.py [soak recovery invariance]
        [--export EXPORT] [--seconds 60] [--clients 8] [--out benchmarks/results/reliability.json]

Figures on a shared machine move with its load: compare them within one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
KEY = "benchmark-admin-key"


def tiny_export(base: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    import torch

    from fakes import make_fake_run
    from rgalign.export import export_run

    torch.set_num_threads(1)
    out = base / "export"
    export_run(make_fake_run(base), out, precisions=("fp32", "int8"), exporter="legacy", fuse=False, threads=1)
    return out


def records_of(n: int = 64) -> list[dict]:
    from rgalign.data.encoders import FeatureEncoders
    from rgalign.data.requests import build_requests
    from rgalign.data.synth import tiny_dataset

    ds = tiny_dataset()
    return [dict(r) for r in build_requests(ds, FeatureEncoders.fit(ds), "train").raw[:n]]


class Served:
    """Deploy ``export`` at ``precision`` and serve it supervised, as `rgalign serve` does."""

    def __init__(self, export: Path, precision: str, work: Path, **deploy_kw) -> None:
        from rgalign.serve.server.admin import restricted_args
        from rgalign.serve.repository.deploy import DeployOptions, deploy
        from rgalign.serve.server import TritonServer
        from rgalign.serve.server.supervisor import Supervisor, SupervisorOptions

        repo = work / f"repo-{precision}-{len(list(work.iterdir()))}"
        deploy(export, repo, DeployOptions(precision=precision, max_batch=16, threads=1, layout="ensemble", **deploy_kw))
        self.server = TritonServer(
            repo, model_control="explicit", log_file=work / f"{repo.name}.log", extra_args=restricted_args(KEY)
        ).start(timeout=180)
        self.supervisor = Supervisor(self.server, KEY, SupervisorOptions())
        self.supervisor.baseline()
        self.thread = threading.Thread(target=self.supervisor.run, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return self.server.http_url

    def close(self) -> None:
        self.supervisor.stop()
        self.thread.join(timeout=60)
        self.server.stop()


# A good answer "differs" when its top-K ids differ or a score moves by more than this: int8 runs
# row-wise, so bit-identical; fp32 runs batched, where left padding and the batch shape move
# scores by ~1e-7 (its export gate allows 1e-4 against PyTorch).
SOAK_ATOL = {"int8": 0.0, "fp32": 1e-5}


def run_soak(export: Path, work: Path, seconds: float, clients: int, precisions: list[str]) -> dict:
    from rgalign.bench.soak import reference_answers, soak

    records = records_of()
    out = {}
    for precision in precisions:
        served = Served(export, precision, work)
        try:
            alone = reference_answers(served.url, records)
            report = soak(
                served.url, records, alone, clients=clients, seconds=seconds, bad_fraction=0.2,
                atol=SOAK_ATOL[precision],
            )
            out[precision] = {**report.to_dict(), "atol": SOAK_ATOL[precision]}
            print(f"soak {precision}: good {report.good_sent} (failed {report.good_failed}, changed "
                  f"{report.good_changed}), bad {report.bad_sent} (wrong {report.bad_wrong}), "
                  f"{report.throughput:.0f} req/s, good p99 {report.good_p99_ms:.1f} ms", flush=True)
        finally:
            served.close()
    return out


def run_recovery(export: Path, work: Path, clients: int) -> dict:
    from rgalign.bench.soak import ClosedLoop
    from rgalign.serve.server.supervisor import serving_stub_pid

    records = records_of()
    served = Served(export, "int8", work)
    server = served.server
    results = {}
    try:
        for model in ("preprocess", "reasoner", "ranker", "postprocess"):
            load = ClosedLoop(server.http_url, records, clients).start()
            time.sleep(3.0)
            n_events = len(served.supervisor.events)
            pid = serving_stub_pid(server.shm_prefix, model, served.supervisor.expected.get(model, 1))
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            trace = []
            while time.monotonic() - killed < 20:
                trace.append((time.monotonic() - killed, server.is_ready(timeout=1.0)))
                time.sleep(0.05)
                if time.monotonic() - killed > 3 and all(r for _t, r in trace[-10:]):
                    break
            time.sleep(2.0)
            load.stop()
            log = load.log
            after = [(s - killed, e - killed, ok) for s, e, ok in log if s >= killed]
            not_ready = [t for t, r in trace if not r]
            events = [str(e) for e in served.supervisor.events[n_events:]]
            recovered = [e for e in served.supervisor.events[n_events:] if e.kind == "recovered"]
            results[model] = {
                "first_success_after_kill_s": round(min((e for s, e, ok in after if ok), default=float("nan")), 3),
                "last_failure_after_kill_s": round(max((e - killed for s, e, ok in log if not ok), default=0.0), 3),
                # failed requests sent before the kill: in flight (or queued) when the stub died
                "lost_in_flight": sum(1 for s, _e, ok in log if not ok and s < killed),
                # failed requests sent after it: refused at once while the model reloaded (each
                # client retries 20 ms after a failure, so this counts attempts, not users)
                "refused_while_reloading": sum(1 for s, _e, ok in log if not ok and s >= killed),
                "requests_total": len(log),
                "not_ready_from_s": round(min(not_ready), 3) if not_ready else None,
                "not_ready_to_s": round(max(not_ready), 3) if not_ready else None,
                "supervisor_reload_s": round(recovered[0].seconds, 3) if recovered else None,
                "events": events,
            }
            print(f"recovery {model}: {results[model]}", flush=True)
    finally:
        served.close()
    return {"clients": clients, "precision": "int8", "per_stub": results}


def in_process_invariance(export: Path, records: list[dict], seconds: float = 5.0) -> dict:
    """The int8 `Pipeline` in process, batched graphs vs row-wise: top-3 changes (alone vs
    batches of 16), batch-16 throughput, batch-1 latency."""
    from rgalign.inference.pipeline import Pipeline
    from rgalign.inference.runtime import OrtRunner

    row_wise = Pipeline.from_export(export, "int8", threads=1)
    batched = Pipeline(
        row_wise.preprocessor,
        OrtRunner.load(export / "reasoner" / "int8" / "model.onnx", threads=1),
        OrtRunner.load(export / "ranker" / "int8" / "model.onnx", threads=1),
        row_wise.intent_ids,
    )
    pipes = {"row_wise": row_wise, "batched": batched}
    out: dict = {}
    for name, pipe in pipes.items():
        alone = [pipe([r], k=3)[0] for r in records]
        together = [a for s in range(0, len(records), 16) for a in pipe(records[s : s + 16], k=3)]
        out[name] = {"top3_changed_alone_vs_batched": int(sum(a.intent_ids != b.intent_ids for a, b in zip(alone, together)))}
    # interleaved call by call, so that both see the same machine load (it moves a lot here)
    spent = {name: 0.0 for name in pipes}
    calls = {name: 0 for name in pipes}
    lat: dict[str, list[float]] = {name: [] for name in pipes}
    t_end = time.perf_counter() + 2 * seconds
    n = 0
    while time.perf_counter() < t_end:
        batch = records[(n % 4) * 16 : (n % 4) * 16 + 16]
        for name, pipe in pipes.items():
            t = time.perf_counter()
            pipe(batch, k=3)
            spent[name] += time.perf_counter() - t
            calls[name] += 1
            t = time.perf_counter()
            pipe([records[n % len(records)]], k=3)
            lat[name].append(time.perf_counter() - t)
        n += 1
    for name in pipes:
        out[name]["batch16_rps"] = round(calls[name] * 16 / spent[name], 1)
        out[name]["batch1_p50_ms"] = round(float(np.median(lat[name])) * 1e3, 2)
    out["batch16_ratio_row_wise_vs_batched"] = round(out["row_wise"]["batch16_rps"] / out["batched"]["batch16_rps"], 3)
    print(f"invariance in process: {out}", flush=True)
    return out


def run_invariance(export: Path, work: Path, seconds: float, clients: int) -> dict:
    from rgalign.bench.soak import http_client, infer_raw, reference_answers

    records = records_of()
    out = {"in_process": in_process_invariance(export, records)}
    for invariant in (True, False):
        served = Served(export, "int8", work, batch_invariant=invariant, queue_delay_us=2000)
        try:
            alone = reference_answers(served.url, records)
            # changes: the same requests 16 at a time, concurrently
            got: list = [None] * len(records)

            def one(i: int) -> None:
                c = http_client(served.url)
                got[i] = infer_raw(c, [json.dumps(records[i]).encode()])
                c.close()

            for s in range(0, len(records), 16):
                ts = [threading.Thread(target=one, args=(i,)) for i in range(s, s + 16)]
                for t in ts:
                    t.start()
                for t in ts:
                    t.join()
            changed = sum(1 for a, b in zip(alone, got) if a.intent_ids != b.intent_ids)
            max_diff = max(float(np.max(np.abs(np.subtract(a.scores, b.scores)))) for a, b in zip(alone, got))
            # throughput at `clients` concurrent clients, batch 1
            count = [0]
            lock = threading.Lock()
            deadline = time.monotonic() + seconds

            def load(cid: int) -> None:
                c = http_client(served.url)
                i = cid
                while time.monotonic() < deadline:
                    r = infer_raw(c, [json.dumps(records[i % len(records)]).encode()])
                    i += clients
                    if r.ok:
                        with lock:
                            count[0] += 1
                c.close()

            t0 = time.monotonic()
            ts = [threading.Thread(target=load, args=(c,)) for c in range(clients)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            throughput = count[0] / (time.monotonic() - t0)
            c = http_client(served.url)
            lat = [infer_raw(c, [json.dumps(records[i % len(records)]).encode()]).seconds for i in range(200)]
            c.close()
            key = "row_wise" if invariant else "batched"
            out.setdefault("served", {})[key] = {
                "top3_changed_alone_vs_batched": changed,
                "of": len(records),
                "max_score_diff": max_diff,
                f"throughput_{clients}_clients_rps": round(throughput, 1),
                "batch1_p50_ms": round(float(np.median(lat)) * 1e3, 2),
            }
            print(f"invariance served {key}: {out['served'][key]}", flush=True)
        finally:
            served.close()
    served = out["served"]
    served["throughput_ratio_row_wise_vs_batched"] = round(
        served["row_wise"][f"throughput_{clients}_clients_rps"] / served["batched"][f"throughput_{clients}_clients_rps"], 3
    )
    return out


def run_huge(export: Path, work: Path) -> dict:
    from rgalign.bench.soak import http_client, infer_raw

    records = records_of()
    served = Served(export, "int8", work)
    try:
        huge = dict(records[0])
        field = next(k for k, v in huge.items() if isinstance(v, str) and " " in v)
        huge[field] = "x" * 20_000_000
        small: list[float] = []
        stop = threading.Event()

        def smalls(cid: int) -> None:
            c = http_client(served.url)
            i = cid
            while not stop.is_set():
                small.append(infer_raw(c, [json.dumps(records[i % len(records)]).encode()]).seconds)
                i += 4
            c.close()

        ts = [threading.Thread(target=smalls, args=(c,)) for c in range(4)]
        for t in ts:
            t.start()
        time.sleep(2.0)
        n0 = len(small)
        c = http_client(served.url)
        reply = infer_raw(c, [json.dumps(huge).encode()])
        c.close()
        time.sleep(0.5)
        stop.set()
        for t in ts:
            t.join()
        during = small[n0:]
        out = {
            "huge_status": reply.status,
            "huge_message": reply.message,
            "huge_seconds": round(reply.seconds, 3),
            "small_requests_meanwhile": len(during),
            "small_max_ms_meanwhile": round(max(during) * 1e3, 1),
            "small_max_ms_before": round(max(small[:n0]) * 1e3, 1),
        }
        print(f"huge: {out}", flush=True)
        return out
    finally:
        served.close()


def run_drain(export: Path, work: Path, clients: int) -> dict:
    import re
    import subprocess

    from rgalign.bench.soak import http_client, infer_raw
    from rgalign.serve.repository.deploy import DeployOptions, deploy

    records = records_of()
    repo = work / "drain-repo"
    deploy(export, repo, DeployOptions(precision="int8", max_batch=16, threads=1, layout="ensemble"))
    out_file = work / "drain-serve.out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    with open(out_file, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rgalign", "serve", str(repo), "--http-port", "0", "--grpc-port", "0",
             "--metrics-port", "0"], stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    url = None
    while url is None:
        if proc.poll() is not None:
            raise SystemExit(out_file.read_text())
        m = re.search(r"HTTP\s+(http://[\d.:]+)", out_file.read_text())
        url = m.group(1) if m else None
        time.sleep(0.2)
    items = [json.dumps(r).encode() for r in records[:16]]
    replies: list[tuple[float, float, str]] = []
    stop = threading.Event()

    def client() -> None:
        c = http_client(url, timeout=30)
        while not stop.is_set():
            t0 = time.monotonic()
            r = infer_raw(c, items)
            replies.append((t0, time.monotonic(), r.status))
            if r.status != "200":
                time.sleep(0.05)
        c.close()

    ts = [threading.Thread(target=client) for _ in range(clients)]
    for t in ts:
        t.start()
    time.sleep(3.0)
    sig_at = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    exited_at = time.monotonic()
    exit_s = exited_at - sig_at
    stop.set()
    for t in ts:
        t.join()
    in_flight = [r for r in replies if r[0] < sig_at <= r[1]]
    out = {
        "clients": clients,
        "batch": 16,
        "exit_code": code,
        "seconds_to_exit": round(exit_s, 2),
        "in_flight_at_sigterm": len(in_flight),
        "in_flight_completed": sum(1 for r in in_flight if r[2] == "200"),
        "completed_after_sigterm": sum(1 for r in replies if r[1] >= sig_at and r[2] == "200"),
        "refused_404_after_sigterm": sum(1 for r in replies if r[1] >= sig_at and r[2] == "404"),
        "failed_otherwise": sorted({r[2] for r in replies if r[2] not in ("200", "404")}),
        "failed_otherwise_count": sum(1 for r in replies if r[2] not in ("200", "404")),
        # ... of which answered while the server process was still up (the rest: connection
        # refused or closed once it had exited)
        "failed_otherwise_before_exit": sum(1 for r in replies if r[2] not in ("200", "404") and r[1] < exited_at),
        "supervisor_lines": [l for l in out_file.read_text().splitlines() if "supervisor" in l or "stopped" in l],
    }
    print(f"drain: {out}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("parts", nargs="*", default=["soak", "recovery", "invariance"])
    ap.add_argument("--export", type=Path)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--precisions", default="int8,fp32", help="soak: the deployments to soak")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "reliability.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rgalign-reliability-") as tmp:
        work = Path(tmp)
        export = args.export or tiny_export(work / "tiny")
        result = json.loads(args.out.read_text()) if args.out.is_file() else {}
        result["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
        result["export"] = "tests' tiny fp32+int8 export" if args.export is None else str(args.export)
        for part in args.parts:
            t0 = time.time()
            if part == "soak":
                result.setdefault("soak", {}).update(
                    run_soak(export, work, args.seconds, args.clients, args.precisions.split(","))
                )
            elif part == "recovery":
                result["recovery"] = run_recovery(export, work, args.clients)
            elif part == "huge":
                result["huge"] = run_huge(export, work)
            elif part == "drain":
                result["drain"] = run_drain(export, work, args.clients)
            elif part == "invariance":
                result["invariance"] = run_invariance(export, work, min(args.seconds, 20.0), args.clients)
            else:
                raise SystemExit(f"unknown part {part!r}")
            result.setdefault("seconds", {})[part] = round(time.time() - t0, 1)
            result.setdefault("measured", {})[part] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
