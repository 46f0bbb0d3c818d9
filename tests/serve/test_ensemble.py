"""The deployment served by a real tritonserver (the nvidia-pytriton wheel's), in both layouts
(the ensemble of four models, and the fused model): top-K equal to the in-process pipeline over
HTTP and gRPC, sync and async; bad requests answered one by one while the server keeps serving;
a bounded load test; a restart; the CLI.

One server (free ports) per layout is shared by the module; the CLI `serve` test starts its own."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from rgalign.errors import ServeError
from rgalign.inference.pipeline import Pipeline
from rgalign.serve.client import AsyncRgalignClient, RgalignClient
from rgalign.serve.server import TritonServer, find_processes, shm_files

pytestmark = pytest.mark.triton

START_TIMEOUT = 120  # ~5 s here; a loaded CI machine may be much slower
MAX_BATCH = 8  # tests/serve/conftest.py deploys with it


@pytest.fixture(scope="module", params=["ensemble", "fused"])
def server(request, layout_repos, tmp_path_factory):
    """A server per layout (`rgalign deploy --layout`): every test here runs on both."""
    repo = layout_repos[request.param]
    srv = TritonServer(repo, log_file=tmp_path_factory.mktemp("logs") / "tritonserver.log")
    srv.start(timeout=START_TIMEOUT)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def pipe(serve_export):
    return Pipeline.from_export(serve_export, "fp32", threads=1)


@pytest.fixture(scope="module")
def expected(pipe, serve_records):
    return pipe(serve_records, k=5)


def urls(server) -> dict[str, str]:
    return {"http": server.http_address, "grpc": server.grpc_url}


def assert_same(got, want, atol=1e-4):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.intent_ids == w.intent_ids
        np.testing.assert_allclose(g.scores, w.scores, atol=atol)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_top_k_equals_the_pipeline_on_100_requests(server, protocol, serve_records, expected):
    with RgalignClient(urls(server)[protocol], protocol=protocol) as client:
        one_by_one = [client.rank([r], k=5)[0] for r in serve_records]
        assert_same(one_by_one, expected)
        batched = []
        for i in range(0, len(serve_records), 7):  # batch 7, the last one 2
            batched += client.rank(serve_records[i : i + 7], k=5)
        assert_same(batched, expected)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_async_clients_concurrently(server, protocol, serve_records, expected):
    async def main():
        async with AsyncRgalignClient(urls(server)[protocol], protocol=protocol) as client:
            assert await client.is_ready()
            parts = await asyncio.gather(
                *(client.rank(serve_records[i : i + 4], k=5) for i in range(0, 40, 4))
            )
            return [r for part in parts for r in part]

    assert_same(asyncio.run(main()), expected[:40])


def test_default_k_and_large_k(server, serve_records, pipe):
    with RgalignClient(server.grpc_url, protocol="grpc") as client:
        assert [len(r.intent_ids) for r in client.rank(serve_records[:2])] == [10, 10]  # serving.topk
        assert_same(client.rank(serve_records[:2], k=50), pipe(serve_records[:2], k=50))


def _raw_infer(server, features: np.ndarray, model: str = "rgalign"):
    """A request built by hand with tritonclient, for what our client would not send."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http_address)
    try:
        inp = httpclient.InferInput("features", list(features.shape), "BYTES")
        inp.set_data_from_numpy(features)
        return client.infer(model, [inp])
    finally:
        client.close()


def test_bad_requests_get_their_error_and_the_server_keeps_serving(server, serve_records, pipe):
    from tritonclient.utils import InferenceServerException

    good = dict(serve_records[0])
    bad = {
        "malformed JSON": (['{"gender": "F",'], "malformed JSON"),
        "missing feature": ([{k: v for k, v in good.items() if k != "tier"}], "'tier'"),
        "wrong type": ([{**good, "age": "thirty"}], "feature 'age' has a non-numeric value 'thirty'"),
        "wrong type 2": ([{**good, "tier": ["gold"]}], "feature 'tier' must be a string or a number"),
        "not an object": (["[1, 2, 3]"], "expected a JSON object"),
        "k out of range": ([good], r"top_k must be in 1\.\.50"),
        "batch over max": ([good] * (MAX_BATCH + 1), f"batch-size must be <= {MAX_BATCH}"),
    }
    for protocol, url in urls(server).items():
        with RgalignClient(url, protocol=protocol) as client:
            for name, (records, message) in bad.items():
                with pytest.raises(ServeError, match=message) as e:
                    client.rank(records, k=99 if name == "k out of range" else 3)
                assert ("(400)" if protocol == "http" else "INVALID_ARGUMENT") in str(e.value), name
                assert server.is_ready(), name
                assert_same(client.rank([good], k=3), pipe([good], k=3))  # still serving
            with RgalignClient(url, protocol=protocol, model="nope") as unknown:
                with pytest.raises(ServeError, match="unknown model"):
                    unknown.rank([good])
            assert server.is_ready()

    with pytest.raises(InferenceServerException, match="got 0") as e:  # an empty batch
        _raw_infer(server, np.zeros((0, 1), dtype=object))
    assert e.value.status() == "400" and server.is_ready()

    # an unseen categorical value is served, through the out-of-vocabulary bucket
    unseen = {**good, "tier": "platinum-never-seen", "region": "XX"}
    with RgalignClient(server.http_address) as client:
        assert_same(client.rank([unseen], k=3), pipe([unseen], k=3))


def test_a_bad_request_fails_alone_among_concurrent_ones(server, serve_records, expected):
    """Concurrent requests share dynamic batches in every step: only the bad one fails."""
    requests = [[r] for r in serve_records[:16]]
    requests[5] = ['{"broken": ']

    def call(records):
        with RgalignClient(server.grpc_url, protocol="grpc") as client:
            try:
                return client.rank(records, k=5)
            except ServeError as e:
                return e

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, requests))
    assert isinstance(results[5], ServeError) and "malformed JSON" in str(results[5])
    for i, result in enumerate(results):
        if i != 5:
            assert_same(result, expected[i : i + 1])


def test_bounded_load_without_errors(server, serve_records):
    """Several clients (HTTP and gRPC) for ~3 s: every request answered, none failed."""
    deadline = time.monotonic() + 3.0
    counts: list[int] = []
    errors: list[Exception] = []

    def worker(i):
        protocol = ("http", "grpc")[i % 2]
        n = 0
        with RgalignClient(urls(server)[protocol], protocol=protocol) as client:
            while time.monotonic() < deadline:
                try:
                    start = n % 90
                    out = client.rank(serve_records[start : start + 1 + n % 3], k=3)
                    assert len(out) == 1 + n % 3
                except Exception as e:  # noqa: BLE001 - collected and reported
                    errors.append(e)
                n += 1
        counts.append(n)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(counts) == 6 and all(c > 0 for c in counts), counts
    assert server.is_ready()


def test_cli_query(server, serve_records, tmp_path, capsys, pipe):
    from rgalign.cli import main

    request = tmp_path / "request.json"
    request.write_text(json.dumps(serve_records[0]))
    main(["query", "--url", f"grpc://{server.grpc_url}", "--features", f"@{request}", "-k", "2", "--json"])
    got = json.loads(capsys.readouterr().out)
    assert got[0]["intent_ids"] == pipe(serve_records[:1], k=2)[0].intent_ids
    main(["query", "--url", server.http_address, "--features", json.dumps(serve_records[:2])])
    table = capsys.readouterr().out
    assert "top 3" in table and pipe(serve_records[:1], k=1)[0].intent_ids[0] in table
    with pytest.raises(SystemExit) as e:
        main(["query", "--url", server.http_address, "--features", '{"gender": "F"}'])
    assert e.value.code != 0 and "missing" in capsys.readouterr().out


def _gone(pid: int, prefix: str) -> bool:
    return find_processes(pid, prefix) == [] and shm_files(prefix) == []


def test_restart_on_the_same_repository(server, serve_records, expected):
    """Last in the module: stop the shared server, start it again, and it serves the same."""
    pid, prefix = server.pid, server.shm_prefix
    started = time.monotonic()
    assert server.stop() == 0  # graceful: every client above closed its connection
    assert time.monotonic() - started < server.exit_timeout_s, "a client connection held the stop"
    assert _gone(pid, prefix)
    server.start(timeout=START_TIMEOUT)
    assert server.pid != pid and server.is_ready()
    with RgalignClient(server.http_address) as client:
        assert_same(client.rank(serve_records[:3], k=5), expected[:3])


def test_cli_serve_prints_urls_and_stops_cleanly_on_sigint(serve_repo, tmp_path):
    log = tmp_path / "server.log"
    cmd = [
        sys.executable, "-m", "rgalign", "serve", str(serve_repo), "--http-port", "0",
        "--grpc-port", "0", "--metrics-port", "0", "--log-file", str(log),
    ]  # fmt: skip
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "COLUMNS": "200"})
    try:
        lines = []
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C" in line:
                break
        text = "".join(lines)
        assert "ready in" in text, text
        http = next(line.split()[-1] for line in lines if line.strip().startswith("HTTP"))
        assert http.startswith("http://127.0.0.1:")
        pid = int(text.split("(pid ")[1].split(";")[0])
        with RgalignClient(http) as client:
            assert client.is_ready()
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=60) == 0
        assert "stopped (signal 2)" in child.stdout.read()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert find_processes(pid, None) == []
    assert not [p for p in Path("/dev/shm").iterdir() if p.name.startswith(f"rgalign{child.pid}_")]
