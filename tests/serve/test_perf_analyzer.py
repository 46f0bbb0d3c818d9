"""NVIDIA's perf_analyzer (the tritonclient 2.51.0 binary) against a real server in both layouts:
its output parsed into throughput, percentiles and the server-side breakdown (per composing model
of the ensemble). Skipped, with the reason, where the binary is missing or does not run."""

from __future__ import annotations

import json

import pytest

from rgalign.bench import perf_analyzer as pa
from rgalign.serve.server import TritonServer

pytestmark = [pytest.mark.triton, pytest.mark.perf_analyzer]

# Short windows: this checks the parsing of a real run, not the figures.
SETTINGS = pa.Settings(interval_ms=500, stability=50, max_trials=3, timeout_s=120)


@pytest.mark.parametrize("layout", ["ensemble", "fused"])
def test_a_real_run_is_parsed(layout, layout_repos, serve_records, tmp_path):
    binary, about = pa.available()
    assert binary is not None, about
    with TritonServer(layout_repos[layout], log_file=tmp_path / "server.log") as server:
        for protocol, url in (("http", server.http_address), ("grpc", server.grpc_url)):
            got = pa.run(binary, url, serve_records[:32], protocol=protocol, concurrency=2, settings=SETTINGS)
            assert got["concurrency"] == 2 and got["protocol"] == protocol and got["source"] == "perf_analyzer"
            assert got["throughput"] > 0
            assert 0 < got["p50_ms"] <= got["p95_ms"] <= got["p99_ms"]
            assert got["server_compute_infer_ms"] > 0 and "server_queue_ms" in got
            assert got["server"]["successful_request_count"] > 0
            if layout == "ensemble":
                assert set(got["composing"]) == {"preprocess", "reasoner", "ranker", "postprocess"}
                assert got["composing"]["reasoner"]["compute_infer_ms"] > 0
            else:
                assert got["composing"] == {} and got["server"]["compute_infer_ms"] > 0


def test_bench_uses_perf_analyzer_and_says_so(serve_repo, serve_records, tmp_path):
    from rgalign.bench.runner import run_bench

    records = tmp_path / "records.json"
    records.write_text(json.dumps(serve_records[:32]))
    with TritonServer(serve_repo, log_file=tmp_path / "server.log") as server:
        out = pa.bench(server.http_address, server.grpc_url, serve_records, (1,), quick=True)
        result = run_bench(None, tmp_path / "bench", url=server.http_address, grpc_url=server.grpc_url,
                           quick=True, records_file=records)
    assert out["status"] == "OK" and out["source"] == "perf_analyzer", out
    for protocol in ("http", "grpc"):
        (level,) = out[protocol]["levels"]
        assert level["status"] == "OK" and level["concurrency"] == 1 and level["p50_ms"] > 0, level
    served = result["served"]
    assert served["source"] == "perf_analyzer" and [lv["concurrency"] for lv in served["http"]["levels"]] == [1, 16]
    assert "perf_analyzer" in result["ratio_notes"]["triton_c16_vs_c1_throughput"]
    text = (tmp_path / "bench" / "bench.md").read_text()
    assert "measured with perf_analyzer" in text and "Server side" in text and "reasoner" in text
