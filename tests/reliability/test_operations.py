"""Operating a live server through `rgalign serve` (a real subprocess): deploy onto its
repository is refused unless --force, which reloads the server so that what is served is what is
on disk; SIGTERM drains in-flight requests, refuses new ones, and exits within a bound."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from rgalign.bench.soak import http_client, infer_raw
from rgalign.errors import ServeError

pytestmark = pytest.mark.reliability

DRAIN_BOUND_S = 30.0  # drain (10 s at most) + Triton's exit timeout (5 s) + stub cleanup


@pytest.fixture(scope="module")
def live(int8_export: Path, tmp_path_factory: pytest.TempPathFactory):
    from rgalign.serve.repository.deploy import DeployOptions, deploy

    repo = tmp_path_factory.mktemp("live") / "repo"
    deploy(int8_export, repo, DeployOptions(precision="int8", max_batch=16, threads=1))
    out = repo.parent / "serve.out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    with open(out, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rgalign", "serve", str(repo), "--http-port", "0", "--grpc-port", "0",
             "--metrics-port", "0", "--drain-timeout", "10"],
            stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 120
    url = None
    while time.monotonic() < deadline and url is None:
        assert proc.poll() is None, out.read_text()
        m = re.search(r"HTTP\s+(http://[\d.:]+)", out.read_text())
        url = m.group(1) if m else None
        time.sleep(0.2)
    assert url, out.read_text()
    yield {"repo": repo, "url": url, "proc": proc, "out": out, "export": int8_export}
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_deploy_onto_a_served_repo_is_refused_without_force(live):
    from rgalign.serve.repository.deploy import DeployOptions, deploy

    before = (live["repo"] / "deploy.json").read_bytes()
    with pytest.raises(ServeError, match="is being served.*--force"):
        deploy(live["export"], live["repo"], DeployOptions(precision="fp32", threads=1))
    assert (live["repo"] / "deploy.json").read_bytes() == before
    r = subprocess.run(
        [sys.executable, "-m", "rgalign", "deploy", str(live["export"]), "--out", str(live["repo"])],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode != 0 and "is being served" in r.stderr + r.stdout and "Traceback" not in r.stderr


def test_forced_deploy_reloads_the_server_from_disk(live, records):
    from rgalign.inference.pipeline import Pipeline
    from rgalign.serve.repository.deploy import DeployOptions, deploy

    log = live["repo"] / "tritonserver.log"
    size_before = log.stat().st_size
    errors: list[str] = []
    stop = threading.Event()

    def load():
        c = http_client(live["url"])
        i = 0
        while not stop.is_set() and i < 5000:
            r = infer_raw(c, [json.dumps(records[i % len(records)]).encode()])
            if not r.ok:
                errors.append(f"{r.status} {r.message}")
            i += 1
        c.close()

    t = threading.Thread(target=load)
    t.start()
    summary = deploy(live["export"], live["repo"], DeployOptions(precision="fp32", threads=1), force=True)
    stop.set()
    t.join(timeout=60)
    assert "reloaded" in summary["reload"]
    assert errors == [], errors[:5]  # Triton swaps in the new models without an outage
    assert log.is_file() and log.stat().st_size > size_before  # the live log survived the swap
    # served == on disk: the fp32 pipeline's answers
    want = Pipeline.from_export(live["export"], "fp32", threads=1)(records[:8], k=3)
    c = http_client(live["url"])
    got = [infer_raw(c, [json.dumps(r).encode()], top_k=3) for r in records[:8]]
    c.close()
    for g, w in zip(got, want):
        assert g.ok and g.intent_ids[0] == w.intent_ids
        np.testing.assert_allclose(g.scores[0], w.scores, atol=1e-4)


def test_sigterm_drains_in_flight_requests_then_exits(live, records):
    """8 clients of batch 16 at SIGTERM: every request either completes (200) or is refused at
    once (404, unknown model) while draining; none fails otherwise; the process exits in time."""
    proc = live["proc"]
    replies: list[tuple[str, str]] = []
    stop = threading.Event()
    items = [json.dumps(r).encode() for r in records[:16]]

    def client():
        c = http_client(live["url"], timeout=30)
        while not stop.is_set():
            r = infer_raw(c, items)
            replies.append((r.status, r.message))
            if r.status not in ("200",):
                time.sleep(0.05)
        c.close()

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=DRAIN_BOUND_S + 30)
    exit_s = time.monotonic() - t0
    stop.set()
    for t in threads:
        t.join(timeout=60)
    out = live["out"].read_text()
    assert code == 0, out[-2000:]
    assert exit_s < DRAIN_BOUND_S, exit_s
    assert "drained" in out
    ok = sum(1 for s, _ in replies if s == "200")
    refused = [m for s, m in replies if s == "404"]
    other = [(s, m) for s, m in replies if s not in ("200", "404")]
    assert ok > 0
    # after the drain the server is gone: a client may see its connection refused, never a 5xx
    assert not [x for x in other if x[0].startswith("5")], other[:5]
    assert all("unknown model" in m or "no available versions" in m for m in refused)
