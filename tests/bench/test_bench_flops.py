"""FLOP counting on shapes small enough to check by hand, the floor arithmetic, and the peak
measurement's output (not its speed)."""

from __future__ import annotations

import pytest
import torch

from rgalign.bench.flops import DecoderShape, decoder_flops, floor_ms, measure_peaks, torch_flops
from rgalign.bench.timing import Budget, summarize


def test_decoder_flops_by_hand():
    # 1 layer, hidden 4, MLP 8, 2 query heads of dim 2 sharing 1 KV head, head to 3; batch 2 x 3 tokens
    s = DecoderShape(layers=1, hidden=4, intermediate=8, heads=2, kv_heads=1, head_dim=2, d_out=3)
    f = decoder_flops(s, batch=2, seq=3)
    tokens = 6
    q, kv, o, mlp = 4 * 4, 2 * (4 * 2), 4 * 4, 3 * (4 * 8)  # multiply-adds per token
    assert f["weights"] == 2 * tokens * (q + kv + o + mlp) + 2 * 2 * 4 * 3  # + the head on 2 pooled rows
    assert f["weights"] == 1776
    assert f["attention"] == 2 * (2 * 2 * 2 * 3 * 3 * 2)  # QK^T and AV: 2 x (2 flops x B h T T d)
    assert f["total"] == 1776 + 288


def test_default_reasoner_figure_and_scaling():
    s = DecoderShape(layers=4, hidden=256, intermediate=512, heads=4, kv_heads=2, head_dim=64, d_out=64)
    assert decoder_flops(s, 1, 64)["total"] == 318_799_872  # the module docstring's example
    one, eight = decoder_flops(s, 1, 64), decoder_flops(s, 8, 64)
    assert eight["total"] == 8 * one["total"]  # linear in batch
    # attention is quadratic in tokens, the weight matmuls (but the head) linear
    assert decoder_flops(s, 1, 128)["attention"] == 4 * one["attention"]


def test_from_hf_config_and_torch_count_agree():
    from tiny import tiny_reasoner

    r = tiny_reasoner()
    s = DecoderShape.from_hf_config(r.backbone.config.to_dict(), r.config.d_query)
    assert (s.layers, s.hidden, s.heads, s.kv_heads) == (2, 64, 2, 1)
    ids = torch.full((2, 16), 5, dtype=torch.long)
    counted = torch_flops(r, ids, torch.ones_like(ids))
    # FlopCounterMode counts every weight matmul (SDPA on the CPU path is not counted)
    assert counted == decoder_flops(s, 2, 16)["weights"]
    assert torch_flops(torch.nn.Linear(4, 3), torch.ones(2, 4)) == 2 * 2 * 4 * 3


def test_floor_arithmetic():
    flops = {"weights": 2_000_000_000, "attention": 1_000_000_000, "total": 3_000_000_000}
    peaks = {"fp32": 100.0, "int8": 200.0}  # GFLOP/s
    assert floor_ms(flops, "int8", peaks) == pytest.approx(10.0 + 10.0)  # attention stays at the fp32 peak
    assert floor_ms(flops, "fp32", peaks) == pytest.approx(20.0 + 10.0)
    assert floor_ms({"total": 1_000_000_000}, "int8", peaks) == pytest.approx(5.0)
    assert floor_ms(flops, "int8", {"fp32": 100.0, "int8": None}) is None


def test_measure_peaks_reports_every_implementation():
    budget = Budget(warmup=1, min_reps=2, max_reps=3, seconds=0.01)
    out = measure_peaks({"small": (8, 16, 32)}, threads=1, budget=budget)
    got = {(g["impl"], g["precision"]) for g in out["gemms"]}
    assert got == {("pytorch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")}, out["errors"]
    assert all(g["gflops"] > 0 and g["shape"] == [8, 16, 32] for g in out["gemms"])
    assert out["peak_gflops"]["fp32"] > 0 and out["peak_gflops"]["int8"] > 0


def test_summarize_percentiles_and_throughput():
    t = summarize([0.001] * 98 + [0.010, 0.020], items=4, wall_s=0.5)
    assert t.n == 100 and t.p50_ms == pytest.approx(1.0) and t.p99_ms > t.p95_ms >= t.p50_ms
    assert t.throughput == pytest.approx(4 * 100 / 0.5)
