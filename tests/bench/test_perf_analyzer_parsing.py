"""perf_analyzer's pieces without a server: its input file, its command line, and the parsing of
its CSV and report (texts captured from a real run of the 2.51.0 binary on the ensemble)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rgalign.bench import perf_analyzer as pa
from rgalign.errors import ConfigError

CSV = """Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,Server Compute Infer,Server Compute Output,Server Cache Hit,Server Cache Miss,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,request/response,response wait
1,273.591,61,1084,1,79,2203,210,0,0,0,3400,3899,5656,7399,61,3571
4,536.348,53,3105,1,92,3802,387,0,0,0,7077,9981,11035,13643,53,7377
"""

REPORT = """*** Measurement Settings ***
Request concurrency: 4
  Client: 
    Request count: 1940
    Throughput: 536.348 infer/sec
  Server: 
    Inference count: 1941
    Execution count: 1941
    Cache hit count: 0
    Cache miss count: 0
    Successful request count: 1941
    Avg request latency: 6489 usec
      Average Cache Hit Latency: 0 usec
      Average Cache Miss Latency: 4279 usec 

  Composing models: 
  postprocess, version: 1
      Inference count: 1941
      Execution count: 1858
      Successful request count: 1941
      Avg request latency: 1055 usec (overhead 2 usec + queue 411 usec + cache hit/miss 642 usec)
          Average Cache Hit Latency: 0 usec
          Average Cache Miss Latency: 642 usec (cache lookup/insertion 0 usec + compute input 22 usec + compute infer 493 usec + compute output 125 usec)

  reasoner, version: 1
      Inference count: 1943
      Execution count: 1913
      Avg request latency: 2711 usec (overhead 2 usec + queue 1191 usec + cache hit/miss 1518 usec)
          Average Cache Miss Latency: 1518 usec (cache lookup/insertion 0 usec + compute input 22 usec + compute infer 1443 usec + compute output 52 usec)

Inferences/Second vs. Client p99 Batch Latency
Concurrency: 4, throughput: 536.348 infer/sec, latency 13643 usec
"""


def test_parse_csv_in_milliseconds():
    rows = pa.parse_csv(CSV)
    assert [r["concurrency"] for r in rows] == [1, 4]
    assert rows[0]["throughput"] == pytest.approx(273.591)
    assert rows[0]["p50_ms"] == pytest.approx(3.4) and rows[0]["p99_ms"] == pytest.approx(7.399)
    assert rows[1]["server_queue_ms"] == pytest.approx(0.001)
    assert rows[1]["server_compute_infer_ms"] == pytest.approx(3.802)
    with pytest.raises(ConfigError, match="no rows"):
        pa.parse_csv("Concurrency,Inferences/Second\n")


def test_parse_report_per_composing_model():
    got = pa.parse_stdout(REPORT)[4]
    assert got["server"]["successful_request_count"] == 1941
    assert got["server"]["request_ms"] == pytest.approx(6.489)
    reasoner = got["composing"]["reasoner"]
    assert reasoner["execution_count"] == 1913  # < inference count: dynamic batches formed
    assert reasoner["queue_ms"] == pytest.approx(1.191)
    assert reasoner["compute_infer_ms"] == pytest.approx(1.443)
    assert got["composing"]["postprocess"]["compute_output_ms"] == pytest.approx(0.125)


def test_input_data_is_valid_json_per_entry_and_repeats_what_it_is_told():
    records = [{"age": i, "tier": "gold"} for i in range(5)]
    plain = pa.input_data(records)
    assert len(plain["data"]) == 5
    entry = plain["data"][0]["features"]
    assert entry["shape"] == [1] and json.loads(entry["content"][0]) == records[0]

    data = pa.input_data(records, n=2000, repeated=0.5, hot=4, seed=1, tag="run1-")
    texts = [e["features"]["content"][0] for e in data["data"]]
    repeats = len(texts) - len(set(texts))
    assert 0.45 < repeats / len(texts) < 0.55  # ~half repeat one of 4 requests
    assert all("request_id" in json.loads(t) or json.loads(t) in records for t in texts)
    unique = pa.input_data(records, n=50, tag="x")["data"]
    assert len({e["features"]["content"][0] for e in unique}) == 50  # no repeats at all
    with pytest.raises(ConfigError):
        pa.input_data(records, repeated=1.5)


def test_command_line(tmp_path: Path):
    settings = pa.Settings(interval_ms=1500, percentile=99, headers={"rgalign-admin": "s3cret"})
    cmd = pa.command(Path("/x/perf_analyzer"), "127.0.0.1:8001", "rgalign", "grpc", 4,
                     tmp_path / "in.json", tmp_path / "out.csv", settings)
    text = " ".join(cmd)
    assert "-i grpc" in text and "--concurrency-range 4:4" in text and "--measurement-interval 1500" in text
    assert "--percentile=99" in text and "-H rgalign-admin:s3cret" in text and "--verbose-csv" in text
    assert "--request-count" not in text
    bounded = pa.command(Path("pa"), "h:1", "m", "http", 1, tmp_path / "i", tmp_path / "o", pa.Settings(request_count=300))
    assert "--request-count 300" in " ".join(bounded)  # one window, no stability check


def test_environment_puts_the_plain_named_libs_first(tmp_path: Path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "libs").mkdir()
    env = pa.environment(tmp_path / "bin" / "perf_analyzer", {"LD_LIBRARY_PATH": "/old"})
    parts = env["LD_LIBRARY_PATH"].split(":")
    assert parts[0] == str(tmp_path / "libs") and parts[-1] == "/old"


def test_environment_repairs_libs_that_point_into_a_deleted_venv(tmp_path: Path):
    if pa._pytriton_libs() is None:
        pytest.skip("nvidia-pytriton is not installed: no libraries to copy")
    (tmp_path / "bin").mkdir()
    libs = tmp_path / "libs"
    libs.mkdir()
    for plain in pa._LIBS:  # what an older install left: links into a venv that is gone
        (libs / plain).symlink_to(tmp_path / "deleted-venv" / plain)
    pa.environment(tmp_path / "bin" / "perf_analyzer", {})
    for plain in pa._LIBS:
        assert (libs / plain).is_file() and not (libs / plain).is_symlink()
        assert (libs / plain).stat().st_size > 1000


def test_find_honours_the_environment_variable(tmp_path: Path, monkeypatch):
    monkeypatch.setenv(pa.ENV_VAR, str(tmp_path / "nope"))
    binary, why = pa.find()
    assert binary is None and "is not a file" in why


def test_a_retry_sends_new_unique_requests_and_the_same_repeated_ones():
    data = pa.input_data([{"age": 1}], n=40, repeated=0.5, tag="t")
    again = pa._retagged(data)
    for a, b in zip(data["data"], again["data"]):
        ra, rb = (json.loads(e["features"]["content"][0]) for e in (a, b))
        if "request_id" in ra:
            assert rb["request_id"] == ra["request_id"] + "-retry"
        else:
            assert ra == rb
