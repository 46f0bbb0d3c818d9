"""``rgalign bench --quick`` on a tiny export writes bench.json / .md / .png of the right shape;
``rgalign doctor`` finds the CPU path working. Behaviour only: no figure here is a speed claim."""

from __future__ import annotations

import json

import pytest

from rgalign.cli import main
from rgalign.errors import ConfigError


@pytest.mark.slow
def test_bench_quick_on_a_tiny_export(bench_export, tmp_path, capsys):
    out = tmp_path / "bench"
    main(["bench", str(bench_export), "--out", str(out), "--quick", "--threads", "1",
          "--batches", "1,2", "--seqs", "16,64"])
    result = json.loads((out / "bench.json").read_text())

    for key in ("machine", "ratios", "ratio_notes", "targets", "inprocess", "flop_floor", "served", "budget"):
        assert key in result
    assert result["served"] is None and result["quick"] is True
    assert result["machine"]["threads"] == [1] and result["machine"]["cpu"]

    ok = [r for r in result["inprocess"] if r["status"] == "OK"]
    engines = {(r["model"], r["engine"]) for r in ok}
    for model in ("reasoner", "ranker", "pipeline"):
        for engine in ("pytorch-eager", "onnxruntime-fp32", "onnxruntime-int8"):
            assert (model, engine) in engines
    assert {(r["batch"], r["seq"]) for r in ok if r["model"] == "reasoner"} == {(1, 16), (2, 16), (1, 64), (2, 64)}
    for r in ok:
        assert 0 <= r["min_ms"] <= r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] and r["n"] >= 1 and r["throughput"] > 0
    # what cannot run here is a row with its reason, not a crash
    skipped = {r["engine"]: r["reason"] for r in result["inprocess"] if r["status"] == "SKIPPED"}
    assert "pytorch-compile" in skipped and "--quick" in skipped["pytorch-compile"]

    ratios = result["ratios"]
    for name in ("reasoner_int8_vs_torch_eager", "reasoner_int8_vs_fp32", "ort_fp32_vs_torch_eager",
                 "reasoner_int8_vs_flop_floor"):
        assert ratios[name] is not None and ratios[name] > 0, result["ratio_notes"][name]
    for name in ("triton_overhead_ms", "triton_c16_vs_c1_throughput"):
        assert name in ratios and ratios[name] is None
    assert [t["ratio"] for t in result["targets"]][:2] == ["reasoner_int8_vs_torch_eager", "reasoner_int8_vs_flop_floor"]

    case = next(c for c in result["flop_floor"]["models"]["reasoner"]["cases"] if (c["batch"], c["seq"]) == (1, 64))
    assert case["flops"]["total"] > case["flops"]["weights"] > 0
    assert 0 < case["floor_ms"]["int8"] and 0 < case["fraction"]["int8"]
    assert result["flop_floor"]["peaks"]["1"]["peak_gflops"]["int8"] > 0

    md = (out / "bench.md").read_text()
    assert "## SPEC §8 targets" in md and "reasoner_int8_vs_torch_eager" in md and "## FLOP floor" in md
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files
    assert "wrote" in capsys.readouterr().out


def test_bench_needs_something_to_measure(tmp_path):
    from rgalign.bench.runner import run_bench

    with pytest.raises(ConfigError, match="nothing to benchmark"):
        run_bench(None, tmp_path / "b")
    with pytest.raises(ConfigError, match="--records"):
        run_bench(None, tmp_path / "b", url="127.0.0.1:1")
    with pytest.raises(ConfigError, match="neither an export"):
        run_bench(tmp_path, tmp_path / "b")


def test_doctor_finds_the_cpu_path(capsys):
    from rgalign.bench.doctor import OK, run_doctor

    doc = run_doctor()
    by_name = {c.name: c for c in doc.checks}
    assert by_name["ORT CPUExecutionProvider"].status == OK
    assert by_name["onnxruntime"].status == OK and by_name["torch"].status == OK
    assert doc.ok
    for c in doc.checks:
        assert c.status == OK or c.fix, f"{c.name} is {c.status} without a hint"
    try:
        main(["doctor", "--json"])
    except SystemExit as e:  # main exits only on failure
        pytest.fail(f"doctor exited {e.code}")
    out = capsys.readouterr().out
    assert '"ok": true' in out and "CPUExecutionProvider" in out


@pytest.mark.slow
@pytest.mark.triton
def test_served_bench_against_a_real_server(bench_export, tmp_path):
    """The async clients over HTTP and gRPC against the deployed tiny export; ratios from them."""
    from rgalign.inference.records import dataset_records
    from rgalign.bench.ratios import compute_ratios
    from rgalign.bench.served import bench_served
    from rgalign.bench.timing import Budget
    from rgalign.data.encoders import FeatureEncoders
    from rgalign.io import read_json
    from rgalign.serve.repository.deploy import DeployOptions, deploy
    from rgalign.serve.server import TritonServer

    repo = tmp_path / "repo"
    deploy(bench_export, repo, DeployOptions(precision="fp32", max_batch=4, threads=1))
    manifest = read_json(bench_export / "manifest.json")
    records = dataset_records(manifest["source"]["data"]["path"],
                              FeatureEncoders.from_json(bench_export / "encoders.json"), 16)
    budget = Budget(warmup=1, min_reps=3, max_reps=12, seconds=0.2, hard_seconds=5.0)
    with TritonServer(repo) as server:
        served = bench_served(server.http_url, records, budget, (1, 4), grpc_url=server.grpc_url)
    for protocol in ("http", "grpc"):
        p = served[protocol]
        assert p["status"] == "OK", p
        assert p["features_dims"] == [-1, 1]
        assert [lv["concurrency"] for lv in p["levels"]] == [1, 4]
        for lv in p["levels"]:
            assert lv["status"] == "OK", lv
            assert lv["n"] >= 3 and 0 < lv["p50_ms"] <= lv["p99_ms"] and lv["throughput"] > 0
    rows = [{"model": "pipeline", "engine": "onnxruntime-fp32", "device": "cpu", "batch": 1, "seq": None,
             "threads": 1, "status": "OK", "p50_ms": 1.0}]
    ratios, _ = compute_ratios(rows, None, served, "fp32")
    assert ratios["triton_overhead_ms"] == pytest.approx(served["http"]["levels"][0]["p50_ms"] - 1.0)
