"""int8: the fastest (reasoner, ranker) pair of int8 graphs that passes every int8 gate.

Each model gets its own candidates (dynamic per-channel, static QDQ with the chosen calibration,
and for an LLM-size reasoner weight-only int8 ``MatMulNBits``), each gated on its own and timed; pairs
are judged end to end on held-out requests, fastest first. A candidate that fails to quantise,
load or run is a FAIL candidate in the report, never an aborted export. Round 2 (only if round 1
has no passing pair) keeps each model's sensitive MatMuls fp32 and adds the fp32 ranker; its
sensitivity probes are bounded (per layer type past `MAX_NODE_PROBES` MatMuls, and a time
budget, ``ExportOptions.int8_search_seconds``). `_search` holds the measurements behind these
choices.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from rgalign.artifacts.registry import MODELS
from rgalign.errors import ExportError
from rgalign.export.context import ExportContext
from rgalign.export.external import is_external
from rgalign.export.onnx_export import check_onnx
from rgalign.export.precision import (
    quantize_int8_dynamic,
    quantize_int8_static,
    quantize_weight_only,
    sensitive_nodes,
)
from rgalign.export.steps import FAIL, OK
from rgalign.export.validate import GateReport, gated_cosine, validate_pipeline
from rgalign.inference.pipeline import Pipeline

# a MatMul whose int8 version alone costs more than this share of the int8 cosine budget
# (1 - 0.99) stays fp32 in the round-2 int8 candidates: ten such nodes would spend it all
SENSITIVITY_SHARE = 0.1
# int8 (reasoner, ranker) pairs judged end to end in round 1, fastest first (twice as many in
# round 2): each costs one pass over the held-out requests
MAX_PAIRS = 4


@dataclass
class Int8Candidate:
    """One int8 graph of one model: how it was made, its gate, its latency."""

    model: str
    method: str  # "dynamic", "static-minmax", ... + "+fp32-sensitive" in round 2
    fp32_nodes: list[str]
    path: Path | None = None
    report: GateReport | None = None
    latency_ms: float = float("inf")
    error: str = ""

    @property
    def passed(self) -> bool:
        return self.report is not None and self.report.passed

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "passed": self.passed, "error": self.error,
                "fp32_nodes": self.fp32_nodes, "latency_ms": self.latency_ms if self.path else None,
                "gate": self.report.to_dict() if self.report else None}


def _candidate(ctx: ExportContext, name: str, method: str, exclude: list[str]) -> Int8Candidate:
    """Quantise model ``name`` with ``method`` (``exclude``'s MatMuls stay fp32), gate it, time it."""
    label = method + ("+fp32-sensitive" if exclude else "")
    cand = Int8Candidate(name, label, list(exclude))
    dst = ctx.work / "int8" / label / f"{name}.onnx"
    log = ctx.log
    t0 = time.perf_counter()
    try:
        if method == "dynamic":
            quantize_int8_dynamic(ctx.fp32[name], dst, exclude=exclude)
        elif method == "weight-only":
            quantize_weight_only(ctx.fp32[name], dst, bits=8)
        else:
            quantize_int8_static(ctx.fp32[name], dst, ctx.calib[name], ctx.options.calibration, exclude=exclude)
        check_onnx(dst)
        runner = ctx.runner(dst)
        cand.report = ctx.validate_runner(name, runner, "int8", f"{name}/int8({label})")
        cand.latency_ms = ctx.latency(name, runner)
    except Exception as e:  # noqa: BLE001 - any failure of one candidate is that candidate's FAIL
        cand.error = str(e) if isinstance(e, ExportError) else f"{type(e).__name__}: {e}"
        cand.report = None
        log.record(f"quantize {name} int8 {label}", FAIL, time.perf_counter() - t0, cand.error.splitlines()[0])
        return cand
    cand.path = dst
    message = "passed" if cand.passed else "; ".join(cand.report.failures())
    message += f"; {cand.latency_ms:.3g} ms at batch 1" + (f"; {len(exclude)} MatMuls kept fp32" if exclude else "")
    log.record(f"quantize {name} int8 {label}", OK if cand.passed else FAIL, time.perf_counter() - t0, message)
    return cand


def _fp32_fallback(ctx: ExportContext, name: str) -> Int8Candidate:
    """Model ``name``'s fp32 graph as the int8 deployment's member, gated and timed like an int8
    candidate (method "fp32": the manifest says plainly that this part is not quantised)."""
    cand = Int8Candidate(name, "fp32", [], path=ctx.fp32[name])
    runner = ctx.runner(cand.path)
    cand.report = ctx.validate_runner(name, runner, "int8", f"{name}/int8(fp32)")
    cand.latency_ms = ctx.latency(name, runner)
    ctx.log.record(f"candidate {name} fp32 in the int8 deployment", OK if cand.passed else FAIL, 0.0,
               f"beside the int8 {name}s of round 2; {cand.latency_ms:.3g} ms at batch 1")
    return cand


def _sensitivity(ctx: ExportContext, name: str, seconds: float) -> tuple[list[str], dict[str, float], dict]:
    """The gate's own cosine (batch-centred for the reasoner) per probe, within ``seconds``."""
    spec, ref, feeds = ctx.specs[name], ctx.reference_outputs(name), ctx.feeds[name]
    want = [ref(f)[spec.gated_output] for f in feeds]

    def cosine(path: Path) -> float:
        run = ctx.runner(path)
        got = [run(f)[spec.gated_output] for f in feeds]
        return float(gated_cosine(spec, got, want)[1].mean())

    budget = SENSITIVITY_SHARE * (1.0 - spec.tolerances.int8_cosine)
    return sensitive_nodes(ctx.fp32[name], ctx.work / "int8" / "probes" / name, cosine, budget, seconds=seconds)


def _search(ctx: ExportContext) -> None:
    """Choose the int8 reasoner and ranker: the fastest pair that passes every int8 gate.

    Each model gets its own candidates (dynamic, and static QDQ with the chosen calibration),
    each gated on its own (cosine) and timed at batch 1. Pairs of passing candidates are then
    judged end to end on the held-out requests (top-10 overlap, GAUC drop), fastest pair first
    (at most `MAX_PAIRS`); the first that passes is kept. Measured on the trained default-size
    run: the reasoner's dynamic int8 is the fast one on an AVX2 CPU (S8S8 QDQ runs 2x slower
    than fp32 there), while the ranker's first AutoInt layer only survives static calibration;
    a pair of one method for both models would keep a slower graph or none.

    Round 2, only if round 1 has no passing pair: each model's candidates again with its
    *sensitive* MatMuls kept fp32 (those whose int8 version alone costs more than
    `SENSITIVITY_SHARE` of the cosine budget), and the fp32 ranker (`_fp32_fallback`, recorded
    as ranker method "fp32") beside them, all pairs again fastest first. The fp32 ranker is in
    the same round because the reasoner is where int8 pays: on the aligned seed-0 run the only
    all-int8 pair that passed used the static reasoner (17.1 ms at batch 1, slower than fp32),
    while the dynamic reasoner with the fp32 ranker passes at about a third of that.
    """
    log, eval_requests, reference = ctx.log, ctx.eval_requests, ctx.reference
    methods = ("dynamic", f"static-{ctx.options.calibration}")
    cands: dict[str, list[Int8Candidate]] = {
        name: [_candidate(ctx, name, m, []) for m in methods] for name in MODELS
    }
    # weight-only int8 (MatMulNBits) for an LLM-size reasoner (one written with external data):
    # the LLM-runtime way, activations stay float. Not for a small one: there it is no faster,
    # and a choice by latency would trade the dynamic graph that serving runs row-wise (batch
    # invariance, rgalign.inference.batch_invariance) for one whose batch invariance is unmeasured
    if is_external(ctx.fp32["reasoner"]):
        cands["reasoner"].append(_candidate(ctx, "reasoner", "weight-only", []))
    tried: list[tuple[str, str, GateReport]] = []  # (reasoner method, ranker method, end-to-end gate)

    def pick(limit: int) -> tuple[Int8Candidate, Int8Candidate, GateReport] | None:
        done = {(r, k) for r, k, _ in tried}
        pairs = sorted(
            ((r, k) for r in cands["reasoner"] if r.passed for k in cands["ranker"] if k.passed
             if (r.method, k.method) not in done),
            key=lambda p: p[0].latency_ms + p[1].latency_ms,
        )
        for r, k in pairs[:limit]:
            label = f"reasoner {r.method} + ranker {k.method}"
            pipe = Pipeline(ctx.pre, ctx.runner(r.path), ctx.runner(k.path), ctx.src.encoders.intent_ids)
            rep = validate_pipeline(pipe.forward(eval_requests.records), reference, eval_requests, "int8",
                                    name=f"pipeline/int8({label})")
            tried.append((r.method, k.method, rep))
            log.record(f"gate int8 pipeline: {label}", OK if rep.passed else FAIL, 0.0,
                       "passed" if rep.passed else "; ".join(rep.failures()))
            if rep.passed:
                return r, k, rep
        return None

    chosen = pick(MAX_PAIRS)
    sensitivity: dict[str, Any] = {}
    if chosen is None:
        deadline = time.perf_counter() + ctx.options.int8_search_seconds
        for name in MODELS:
            over, losses, info = log.run(
                f"int8 sensitivity of {name}", _sensitivity, ctx, name, max(0.0, deadline - time.perf_counter()),
                message=lambda r: (f"{len(r[0])} MatMuls over budget; {r[2]['probes']} probes ({r[2]['probe']}) of "
                                   f"{r[2]['weight_matmuls']} MatMuls, {len(r[2]['skipped_for_time'])} skipped "
                                   f"for time, {len(r[2]['failed'])} failed"),
            )
            sensitivity[name] = {"fp32_nodes": over, "cosine_loss": {k: round(v, 6) for k, v in losses.items()},
                                 **info}
            if over:
                cands[name] += [_candidate(ctx, name, m, over) for m in methods]
        # the ranker's int8 graphs are no faster than fp32 on this CPU (seed 0: 0.7-1.3 ms vs 0.65 ms)
        cands["ranker"].append(_fp32_fallback(ctx, "ranker"))
        chosen = pick(2 * MAX_PAIRS)  # about twice round 1's candidates

    ctx.report["int8_candidates"] = {name: [c.to_dict() for c in cs] for name, cs in cands.items()}
    ctx.report["int8_pairs"] = [{"reasoner": r, "ranker": k, "gate": rep.to_dict()} for r, k, rep in tried]
    if sensitivity:
        ctx.report["int8_sensitivity"] = sensitivity
    if chosen is None:
        # every candidate's and every tried pair's failures
        for cs in cands.values():
            for c in cs:
                ctx.reports.append(c.report or GateReport(f"{c.model}/int8({c.method})", "int8", problems=[c.error]))
        ctx.reports += [rep for _, _, rep in tried]
        if not tried:
            problem = "no int8 reasoner and ranker pair passed their own gates"
            ctx.reports.append(GateReport("pipeline/int8", "int8", problems=[problem]))
        log.record("choose int8", FAIL, 0.0, "no int8 pair passed its gates")
        return
    r, k, e2e = chosen
    for c in (r, k):
        ctx.graphs[(c.model, "int8")] = c.path
        c.report.artifact = f"{c.model}/int8"
        ctx.report["artifacts"][f"{c.model}/int8"] = {
            "method": c.method, "fp32_nodes": c.fp32_nodes, "checker": check_onnx(c.path), "gate": c.report.to_dict(),
        }
        ctx.reports.append(c.report)
    e2e.artifact = "pipeline/int8"
    ctx.reports.append(e2e)
    log.record("choose int8", OK, 0.0, f"reasoner {r.method} ({r.latency_ms:.3g} ms), ranker {k.method} "
               f"({k.latency_ms:.3g} ms)")


def quantize_int8(ctx: ExportContext) -> None:
    """The int8 step: skipped when not requested or when the fp32 graphs missed their gate."""
    if not ctx.options.wants("int8"):
        ctx.log.skip("quantize int8", "not requested")
    elif ctx.reference is None:
        ctx.log.skip("quantize int8", "the fp32 graphs missed their gate")
    else:
        _search(ctx)
