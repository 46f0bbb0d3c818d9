"""Ratios and targets from measured rows (made up here), the served client's small pieces."""

from __future__ import annotations

import pytest

from rgalign.bench.inputs import reasoner_feeds
from rgalign.bench.ratios import compute_ratios, targets
from rgalign.serve.client import features_shape, grpc_url_for, host_port


def _row(model, engine, p50, batch=1, seq=64, threads=2):
    return {"model": model, "engine": engine, "device": "cpu", "batch": batch, "seq": seq if model == "reasoner" else None,
            "threads": threads, "status": "OK", "p50_ms": p50, "throughput": batch / p50 * 1e3}


def test_ratios_from_rows():
    rows = [
        _row("reasoner", "pytorch-eager", 20.0, threads=2),
        _row("reasoner", "pytorch-eager", 12.0, threads=1),  # the faster thread count is taken
        _row("reasoner", "onnxruntime-fp32", 6.0),
        _row("reasoner", "onnxruntime-int8", 2.0),
        _row("reasoner", "onnxruntime-int8", 1.0, batch=8),  # another shape: not the headline
        _row("pipeline", "pytorch-eager", 15.0),
        _row("pipeline", "onnxruntime-int8", 5.0),
        _row("pipeline", "onnxruntime-int8", 20.0, batch=8),  # 400 req/s: its best batched
    ]
    floor = {"models": {"reasoner": {"cases": [{"batch": 1, "seq": 64, "floor_ms": {"int8": 0.5}}]}}}
    served = {"http": {"levels": [{"concurrency": 1, "status": "OK", "p50_ms": 6.5, "throughput": 150.0},
                                  {"concurrency": 16, "status": "OK", "p50_ms": 30.0, "throughput": 600.0}]},
              "grpc": {"levels": [{"concurrency": 1, "status": "FAIL", "reason": "boom"}]}}
    ratios, notes = compute_ratios(rows, floor, served, "int8")
    assert ratios["reasoner_int8_vs_torch_eager"] == pytest.approx(6.0)
    assert "1 threads" in notes["reasoner_int8_vs_torch_eager"]
    assert ratios["reasoner_int8_vs_fp32"] == pytest.approx(3.0)
    assert ratios["ort_fp32_vs_torch_eager"] == pytest.approx(2.0)
    assert ratios["pipeline_int8_vs_torch_eager"] == pytest.approx(3.0)
    assert ratios["reasoner_int8_vs_flop_floor"] == pytest.approx(4.0)
    assert ratios["triton_overhead_ms"] == pytest.approx(1.5)
    assert ratios["triton_c16_vs_c1_throughput"] == pytest.approx(4.0)
    assert ratios["triton_overhead_grpc_ms"] is None and "grpc" in notes["triton_overhead_grpc_ms"]
    assert ratios["reasoner_compile_vs_eager"] is None
    assert ratios["triton_saturation_vs_inprocess"] == pytest.approx(1.5)  # 600 / 400
    assert "rgalign client" in notes["triton_overhead_ms"]  # no source given: the own client's
    met = {t["ratio"]: t["met"] for t in targets(ratios)}
    assert met == {"reasoner_int8_vs_torch_eager": True, "reasoner_int8_vs_flop_floor": False,
                   "triton_overhead_ms": True, "triton_c16_vs_c1_throughput": True,
                   "triton_saturation_vs_inprocess": True}


def test_no_rows_no_server():
    ratios, notes = compute_ratios([], None, None, "int8")
    assert all(v is None for v in ratios.values())
    assert notes["triton_overhead_ms"].startswith("not measured: no server")


def test_served_helpers():
    assert host_port("http://10.0.0.1:9000") == ("10.0.0.1", 9000)
    assert host_port("localhost") == ("localhost", 8000)
    assert grpc_url_for("127.0.0.1:8000") == "127.0.0.1:8001"
    assert features_shape([-1, 1], 1) == [1, 1] and features_shape([-1], 3) == [3]
    # perf_analyzer's input and output: tests/bench/test_perf_analyzer_parsing.py


def test_reasoner_feeds_have_exact_lengths():
    from rgalign.inference.preprocess import Preprocessor
    from tiny import TINY_FIELDS, tiny_requests, tiny_tokenizer

    class _NoEncoders:
        pass

    pre = Preprocessor(tiny_tokenizer(), TINY_FIELDS, _NoEncoders(), 96)
    for batch, seq in ((1, 8), (3, 64), (2, 96)):
        feeds = reasoner_feeds(pre, tiny_requests(4), batch, seq)
        assert feeds["input_ids"].shape == (batch, seq) and feeds["attention_mask"].all()
    # a prompt's own end is kept (where the query marker is)
    one = reasoner_feeds(pre, tiny_requests(1), 1, 8)["input_ids"][0].tolist()
    full = pre.tokenizer(pre.prompts(tiny_requests(1))[0])["input_ids"]
    assert one == full[-8:]
