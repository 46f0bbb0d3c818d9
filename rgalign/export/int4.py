"""int4: a weight-only int4 reasoner (``MatMulNBits``, block 32) beside the fp32 ranker, only when
asked for (``--precision int4``): on an AVX2 CPU int4 buys memory, not speed (issue 15 measured
903 MB vs 2.4 GB at Qwen3-0.6B shape, and no faster than int8), so it is never a default.

Gated as int8 is (`Tolerances.cosine`): the reasoner's batch-centred cosine >= 0.99 on the parity
batches, and end to end on held-out requests top-10 overlap >= 0.9 and GAUC drop <= 0.002. A miss
is a gate failure with its figures, like any other precision's. The ranker is a few MB: int4
weight-only MatMuls are meant for LLM-size weights, so the int4 deployment keeps it fp32 (its
manifest entry says method "fp32").
"""

from __future__ import annotations

import time

from rgalign.errors import ExportError
from rgalign.export.context import ExportContext
from rgalign.export.onnx_export import check_onnx
from rgalign.export.precision import quantize_weight_only
from rgalign.export.steps import FAIL, OK
from rgalign.export.validate import GateReport, validate_pipeline
from rgalign.inference.pipeline import Pipeline


def quantize_int4(ctx: ExportContext) -> None:
    if not ctx.options.wants("int4"):
        ctx.log.skip("quantize int4", "not requested")
        return
    if ctx.reference is None:
        ctx.log.skip("quantize int4", "the fp32 graphs missed their gate")
        return
    t0 = time.perf_counter()
    dst = ctx.work / "int4" / "reasoner.onnx"
    try:
        quantize_weight_only(ctx.fp32["reasoner"], dst, bits=4)
        checker = check_onnx(dst)
    except ExportError as e:
        ctx.log.record("quantize reasoner int4 weight-only", FAIL, time.perf_counter() - t0, str(e))
        ctx.reports.append(GateReport("reasoner/int4", "int4", problems=[str(e)]))
        return
    rep = ctx.validate_file("reasoner", dst, "int4")
    ctx.log.record("quantize reasoner int4 weight-only", OK if rep.passed else FAIL, time.perf_counter() - t0,
                   "passed" if rep.passed else "; ".join(rep.failures()))
    ranker = ctx.validate_file("ranker", ctx.fp32["ranker"], "int4")
    ctx.graphs[("reasoner", "int4")] = dst
    ctx.graphs[("ranker", "int4")] = ctx.fp32["ranker"]
    ctx.report["artifacts"]["reasoner/int4"] = {"method": "weight-only int4 (MatMulNBits, block 32)",
                                                "checker": checker, "gate": rep.to_dict()}
    ctx.report["artifacts"]["ranker/int4"] = {"method": "fp32", "gate": ranker.to_dict()}
    ctx.gate("reasoner/int4", rep)
    ctx.gate("ranker/int4", ranker)
    if not rep.passed:
        return
    pipe = Pipeline(ctx.pre, ctx.runner(dst), ctx.runner(ctx.fp32["ranker"]), ctx.src.encoders.intent_ids)
    e2e = validate_pipeline(pipe.forward(ctx.eval_requests.records), ctx.reference, ctx.eval_requests, "int4",
                            name="pipeline/int4")
    ctx.gate("pipeline/int4", e2e)
