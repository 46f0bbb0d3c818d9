"""int8: the fastest (reasoner, ranker) pair of int8 graphs that passes every int8 gate.

Each model gets its own candidates (dynamic per-channel, and for an LLM-size reasoner weight-only
int8 ``MatMulNBits``; static QDQ with the chosen calibration only where it can be chosen, see
`int8_plan`), each gated on its own and timed; pairs are judged end to end on held-out requests,
fastest first. A candidate that fails to quantise,
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
from rgalign.export.onnx_steps import calibration_batches
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


# Why the automatic search leaves static QDQ out (`int8_plan`). Every export on record (the
# quickstart run, the test fixtures, the Qwen3-0.6B-shape run; 2-core AVX2 CPU): the reasoner's
# static int8 passed its gate and was slower than its dynamic int8 that also passed, e.g. 11.7 vs
# 3.9 ms (quickstart), 3,146 vs 211 ms and slower than fp32's 1,798 ms (Qwen3-0.6B shape):
# ONNX Runtime's CPU runs S8S8 QDQ through quantise/dequantise pairs. The ranker's dynamic int8
# passed in each of those too, with the higher cosine (0.9997-0.9999 vs 0.997-0.999) and as fast
# or faster; on the aligned seed-0 run (README) it missed its own gate where static passed (the
# first AutoInt layer). So static runs as the fallback of a model none of whose other
# candidates passes its own gate; up front only with ``--tensorrt`` (a backend that runs QDQ
# natively) or when asked for. At Qwen3-0.6B shape the skip also drops the export's peak step
# (the reasoner's static calibration, 10.3 GB) and the PyTorch calibration pass.
STATIC_SKIPPED = {
    "reasoner": ("static int8 skipped for the reasoner: its static QDQ graph was measured slower on CPU than the "
                 "dynamic int8 that passed (every export on record; 3.1 s vs 0.21 s at Qwen3-0.6B shape, slower "
                 "than fp32), so it can only win on a backend that runs QDQ natively; pass --tensorrt or "
                 "--int8-methods dynamic,static to try it"),
    "ranker": ("static int8 skipped for the ranker: its dynamic int8 passed its gate (static is its fallback when "
               "dynamic misses, and was no faster where both passed); pass --int8-methods dynamic,static to try it"),
}


def int8_plan(ctx: ExportContext) -> tuple[dict[str, list[str]], dict[str, str]]:
    """(round 1's candidate methods per model, the static fallback's models with why it may be
    skipped). Asked-for methods (``--int8-methods``) are tried as listed (weight-only: the
    reasoner only); automatically: dynamic for both, weight-only for an LLM-size reasoner (one
    written with external data), static QDQ up front only with ``--tensorrt``, else as the
    fallback of a model none of whose candidates passes (`STATIC_SKIPPED` says why)."""
    static = f"static-{ctx.options.calibration}"
    asked = ctx.options.int8_methods
    if asked is not None:
        label = {"dynamic": "dynamic", "static": static, "weight-only": "weight-only"}
        plan = {name: [label[m] for m in asked if m != "weight-only" or name == "reasoner"] for name in MODELS}
        return plan, {}
    plan = {name: ["dynamic"] + ([static] if ctx.options.tensorrt else []) for name in MODELS}
    # weight-only int8 (MatMulNBits) for an LLM-size reasoner: the LLM-runtime way, activations
    # stay float. Not for a small one: there it is no faster, and a choice by latency would trade
    # the dynamic graph that serving runs row-wise (batch invariance,
    # rgalign.inference.batch_invariance) for one whose batch invariance is unmeasured
    if is_external(ctx.fp32["reasoner"]):
        plan["reasoner"].append("weight-only")
    fallback = {} if ctx.options.tensorrt else dict(STATIC_SKIPPED)
    return plan, fallback


def _ensure_calibration(ctx: ExportContext) -> None:
    """Calibration feeds for a static candidate planned late: latents from the gated fp32 reasoner
    graph (PyTorch's weights may be released by now)."""
    if ctx.calib.get("reasoner"):
        return
    runner = ctx.runner(ctx.fp32["reasoner"])
    ctx.calib = ctx.log.run("calibration feeds (for the static fallback)", calibration_batches, ctx, runner,
                            message=lambda c: f"{sum(len(f['input_ids']) for f in c['reasoner'])} training "
                                              "requests; latents from the fp32 graph")


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


def _make(ctx: ExportContext, name: str, method: str, exclude: list[str]) -> Int8Candidate:
    """`_candidate`, with the calibration feeds made first for a static one."""
    if method.startswith("static"):
        _ensure_calibration(ctx)
    return _candidate(ctx, name, method, exclude)


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

    Each model gets its own candidates (`int8_plan`: dynamic, weight-only for an LLM-size
    reasoner, static QDQ where it can be chosen), each gated on its own (cosine) and timed at
    batch 1. Pairs of passing candidates are then judged end to end on the held-out requests
    (top-10 overlap, GAUC drop), fastest pair first (at most `MAX_PAIRS`); the first that passes
    is kept. A model none of whose round-1 candidates passes its own gate gets its static QDQ
    candidate then (calibrated on demand); where that was not needed the step log and the report
    (``int8_skipped``) say why it was skipped.

    Round 2, only if round 1 has no passing pair: each model's candidates again with its
    *sensitive* MatMuls kept fp32 (those whose int8 version alone costs more than
    `SENSITIVITY_SHARE` of the cosine budget), and the fp32 ranker (`_fp32_fallback`, recorded
    as ranker method "fp32") beside them, all pairs again fastest first. The fp32 ranker is in
    the same round because the reasoner is where int8 pays: on the aligned seed-0 run the only
    all-int8 pair that passed used the static reasoner (17.1 ms at batch 1, slower than fp32),
    while the dynamic reasoner with the fp32 ranker passes at about a third of that. Last, only
    if that fails too: the skipped static candidates, before the export fails.
    """
    log, eval_requests, reference = ctx.log, ctx.eval_requests, ctx.reference
    plan, skippable = int8_plan(ctx)
    static = f"static-{ctx.options.calibration}"
    cands: dict[str, list[Int8Candidate]] = {}
    skipped: list[str] = []  # models whose static candidate was skipped
    for name in MODELS:
        cands[name] = [_make(ctx, name, m, []) for m in plan[name]]
        if name not in skippable:
            continue
        if any(c.passed for c in cands[name]):
            log.skip(f"quantize {name} int8 {static}", skippable[name])
            ctx.report.setdefault("int8_skipped", {})[name] = {static: skippable[name]}
            skipped.append(name)
        else:  # nothing else passed: the static graph is this model's last int8 candidate of round 1
            cands[name].append(_make(ctx, name, static, []))
            plan[name].append(static)
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
                cands[name] += [_make(ctx, name, m, over) for m in plan[name] if m != "weight-only"]
        # the ranker's int8 graphs are no faster than fp32 on this CPU (seed 0: 0.7-1.3 ms vs 0.65 ms)
        cands["ranker"].append(_fp32_fallback(ctx, "ranker"))
        chosen = pick(2 * MAX_PAIRS)  # about twice round 1's candidates
    if chosen is None and skipped:
        for name in skipped:
            log.record(f"int8 {name} {static}: last resort", OK, 0.0, "no pair passed without it: trying it after all")
            cands[name].append(_make(ctx, name, static, []))
            ctx.report["int8_skipped"].pop(name)
        chosen = pick(2 * MAX_PAIRS)

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
