"""Ratios of figures measured in the same run, and where each SPEC §8 target stands.

Every ratio is a quotient of two medians (p50) of this run, never of a stored figure; a ratio
whose inputs were not measured is None, and ``notes`` says why. The headline case is SPEC §8's:
batch 1, a 64-token prompt (or the longest measured prompt when max_len is shorter).

    reasoner_int8_vs_torch_eager   PyTorch eager p50 / ORT int8 p50      (target >= 5)
    reasoner_int8_vs_fp32          ORT fp32 p50 / ORT int8 p50
    ort_fp32_vs_torch_eager        PyTorch eager p50 / ORT fp32 p50
    reasoner_compile_vs_eager      PyTorch eager p50 / torch.compile p50
    pipeline_int8_vs_torch_eager   the whole pipeline, batch 1, PyTorch / ORT int8
    reasoner_int8_vs_flop_floor    ORT int8 p50 / the int8 FLOP floor    (target <= 3)
    triton_overhead_ms             ensemble p50 over HTTP, batch 1, concurrency 1, minus the
                                   in-process pipeline p50 at the deployed precision (<= 2 ms)
    triton_overhead_grpc_ms        the same over gRPC
    triton_c16_vs_c1_throughput    ensemble throughput at concurrency 16 / at 1, HTTP (>= 3)
    triton_c16_vs_c1_throughput_grpc
    triton_saturation_vs_inprocess the best served throughput (any protocol and concurrency) /
                                   the in-process pipeline's best batched throughput (>= 0.9)

Served figures come from perf_analyzer where it runs, else from rgalign's own client: the notes
name the source.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rgalign.bench.inprocess import find_row
from rgalign.bench.served import level

HEADLINE_BATCH = 1
HEADLINE_SEQ = 64

# SPEC §8 rows this benchmark measures: (ratio, comparison, threshold, what)
TARGETS = (
    ("reasoner_int8_vs_torch_eager", ">=", 5.0, "reasoner ORT int8 vs PyTorch eager, batch 1, 64 tokens"),
    ("reasoner_int8_vs_flop_floor", "<=", 3.0, "reasoner ORT int8 within 3x of the FLOP floor"),
    ("triton_overhead_ms", "<=", 2.0, "Triton ensemble p50 above the in-process ORT pipeline, batch 1, c=1 (ms)"),
    ("triton_c16_vs_c1_throughput", ">=", 3.0, "Triton ensemble throughput at concurrency 16 vs 1"),
    ("triton_saturation_vs_inprocess", ">=", 0.9, "served throughput at saturation vs the in-process pipeline's best batched"),
)


def headline_seq(rows: Sequence[Mapping[str, Any]]) -> int | None:
    """64 if measured, else the measured prompt length closest to it."""
    seqs = sorted({r["seq"] for r in rows if r["model"] == "reasoner" and r["seq"] is not None})
    if not seqs:
        return None
    return min(seqs, key=lambda s: (abs(s - HEADLINE_SEQ), -s))


def _div(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 4)


def compute_ratios(
    rows: Sequence[Mapping[str, Any]],
    floor: Mapping[str, Any] | None,
    served: Mapping[str, Any] | None,
    precision: str,
) -> tuple[dict[str, float | None], dict[str, str]]:
    """(ratios, notes); ``precision`` is the deployed one the Triton overhead is measured against."""
    seq = headline_seq(rows)
    b = HEADLINE_BATCH

    def p50(model: str, engine: str, batch: int = b, s: int | None = seq) -> float | None:
        r = find_row(rows, model, engine, "cpu", batch, s if model == "reasoner" else None)
        return r["p50_ms"] if r else None

    eager, compiled = p50("reasoner", "pytorch-eager"), p50("reasoner", "pytorch-compile")
    fp32, int8 = p50("reasoner", "onnxruntime-fp32"), p50("reasoner", "onnxruntime-int8")
    ratios: dict[str, float | None] = {
        "reasoner_int8_vs_torch_eager": _div(eager, int8),
        "reasoner_int8_vs_fp32": _div(fp32, int8),
        "ort_fp32_vs_torch_eager": _div(eager, fp32),
        "reasoner_compile_vs_eager": _div(eager, compiled),
        "pipeline_int8_vs_torch_eager": _div(p50("pipeline", "pytorch-eager"), p50("pipeline", "onnxruntime-int8")),
    }
    notes: dict[str, str] = {}
    where = f"batch {b}, {seq} tokens" if seq else "no reasoner rows"

    def side(engine: str) -> str:
        r = find_row(rows, "reasoner", engine, "cpu", b, seq)
        return f"{engine} p50 ({r['threads']} threads)" if r else ""

    for name, (num, den) in {
        "reasoner_int8_vs_torch_eager": ("pytorch-eager", "onnxruntime-int8"),
        "reasoner_int8_vs_fp32": ("onnxruntime-fp32", "onnxruntime-int8"),
        "ort_fp32_vs_torch_eager": ("pytorch-eager", "onnxruntime-fp32"),
        "reasoner_compile_vs_eager": ("pytorch-eager", "pytorch-compile"),
    }.items():
        missing = [e for e in (num, den) if p50("reasoner", e) is None]
        notes[name] = (f"{side(num)} / {side(den)}, {where}" if not missing
                       else f"not measured: no {', '.join(missing)} reasoner figure at {where}")
    notes["pipeline_int8_vs_torch_eager"] = "pytorch-eager / onnxruntime-int8 pipeline p50 on raw requests, batch 1"
    if ratios["pipeline_int8_vs_torch_eager"] is None:
        notes["pipeline_int8_vs_torch_eager"] = "not measured: needs PyTorch and ORT int8 pipelines"

    floor_case = None
    if floor:
        for c in (floor.get("models", {}).get("reasoner") or {}).get("cases", []):
            if c["batch"] == b and c["seq"] == seq:
                floor_case = c
    int8_floor = (floor_case or {}).get("floor_ms", {}).get("int8")
    ratios["reasoner_int8_vs_flop_floor"] = _div(int8, int8_floor)
    notes["reasoner_int8_vs_flop_floor"] = (
        f"ORT int8 p50 / int8 FLOP floor ({int8_floor:.4g} ms), {where}; <= 3 is the target"
        if ratios["reasoner_int8_vs_flop_floor"] is not None
        else "not measured: needs the ORT int8 reasoner and the model's FLOP count (its source run)")

    pipe = p50("pipeline", f"onnxruntime-{precision}")
    source = (served or {}).get("source", "rgalign client")
    best_served = max((lv["throughput"] for p in ("http", "grpc") for lv in ((served or {}).get(p) or {}).get("levels", [])
                       if lv.get("status") == "OK" and lv.get("throughput")), default=None)
    best_pipe = max((r["throughput"] for r in rows if r["model"] == "pipeline" and r["engine"] == f"onnxruntime-{precision}"
                     and r.get("status") == "OK" and r.get("throughput")), default=None)
    ratios["triton_saturation_vs_inprocess"] = _div(best_served, best_pipe)
    notes["triton_saturation_vs_inprocess"] = (
        f"best served throughput ({source}) / best in-process onnxruntime-{precision} pipeline throughput over batch sizes"
        if ratios["triton_saturation_vs_inprocess"] is not None
        else "not measured: needs served levels and in-process pipeline rows")
    for protocol, suffix in (("http", ""), ("grpc", "_grpc")):
        c1, c16 = level(served, protocol, 1), level(served, protocol, 16)
        over = None if c1 is None or pipe is None else round(c1["p50_ms"] - pipe, 4)
        ratios[f"triton_overhead{suffix}_ms"] = over
        notes[f"triton_overhead{suffix}_ms"] = (
            f"{protocol} served p50 ({source}) at concurrency 1 minus in-process onnxruntime-{precision} pipeline p50, batch 1"
            if over is not None else
            ("not measured: no server (--url)" if not served else
             f"not measured: needs the {protocol} level at concurrency 1 and the in-process {precision} pipeline"))
        ratios[f"triton_c16_vs_c1_throughput{suffix}"] = _div(c16 and c16["throughput"], c1 and c1["throughput"])
        notes[f"triton_c16_vs_c1_throughput{suffix}"] = (
            f"{protocol} served throughput ({source}) at concurrency 16 / at 1"
            if ratios[f"triton_c16_vs_c1_throughput{suffix}"] is not None
            else ("not measured: no server (--url)" if not served else
                  f"not measured: needs {protocol} levels at concurrency 1 and 16"))
    return ratios, notes


def targets(ratios: Mapping[str, float | None]) -> list[dict[str, Any]]:
    """SPEC §8 targets this benchmark measures, with the figure and whether it is met."""
    out = []
    for name, op, threshold, what in TARGETS:
        value = ratios.get(name)
        met = None if value is None else (value >= threshold if op == ">=" else value <= threshold)
        out.append({"ratio": name, "what": what, "target": f"{op} {threshold:g}", "measured": value, "met": met})
    return out
