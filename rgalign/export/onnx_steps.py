"""The export's ONNX steps over the `ExportContext`: parity feeds, export + fusion (fp32), fp16,
calibration feeds, the PyTorch reference on held-out requests, the fp16 pipeline figures and the
quick latency table. int8 is `rgalign.export.int8`, TensorRT `rgalign.export.trt_steps`.
"""

from __future__ import annotations

from typing import Any

import torch

from rgalign.artifacts.registry import MODELS
from rgalign.errors import ExportError
from rgalign.export import onnx_export
from rgalign.export.context import LATENCY_SEQ, ExportContext
from rgalign.export.external import is_external
from rgalign.export.onnx_export import check_onnx
from rgalign.export.optimize import FusionResult, fuse_for_ort
from rgalign.export.precision import to_fp16
from rgalign.export.reference import TorchPipeline
from rgalign.export.steps import FAIL
from rgalign.export.validate import GateReport, validate_pipeline
from rgalign.inference.pipeline import Pipeline

# real requests added to the random parity batches, and the batch size of calibration feeds
REAL_BATCH = 8
CALIBRATION_BATCH = 16
# calibration requests of a reasoner big enough for external data: each costs one PyTorch and
# one ORT forward of the whole LLM (~2 s at Qwen3-0.6B shape on 2 cores), and MinMax ranges
# settle within a few batches; a small reasoner keeps all of them (up to 256)
BIG_CALIBRATION_REQUESTS = 32


def parity_feeds(ctx: ExportContext) -> None:
    """Each model's parity batches: the spec's random shapes plus one batch of real held-out
    requests (prompts as serving tokenises them)."""
    real: dict[str, list] = {"reasoner": [], "ranker": []}
    if ctx.eval_requests is not None and len(ctx.eval_requests) > 0:
        b = ctx.pre(ctx.eval_requests.records[:REAL_BATCH])
        feed = {"input_ids": b.input_ids, "attention_mask": b.attention_mask}
        q = ctx.refs["reasoner"](feed)["latent_query"]
        real = {"reasoner": [feed], "ranker": [{"cat": b.cat, "num": b.num, "query": q}]}
    for name in MODELS:
        ctx.feeds[name] = ctx.specs[name].batches(0) + real[name]
    ctx.report["tolerances"] = ctx.specs["reasoner"].tolerances.to_dict()
    ctx.report["parity_batches"] = {
        name: [{k: list(v.shape) for k, v in f.items()} for f in feeds] for name, feeds in ctx.feeds.items()
    }


def exported_info(a: onnx_export.OnnxArtifact) -> dict[str, Any]:
    d = a.to_dict()
    d.pop("path")  # a temporary file
    return d


def _describe_export(a: onnx_export.OnnxArtifact) -> str:
    return f"{a.exporter} exporter, opset {a.opset}, {a.seconds:.1f} s" + (f"; {a.note}" if a.note else "")


def _fuse(ctx: ExportContext, name: str, art: onnx_export.OnnxArtifact, rep: GateReport) -> tuple:
    """(chosen fp32 graph, its gate, fusion info): the fused graph only where it passes fp32."""
    log, chosen, info = ctx.log, art.path, {"kept": False}
    if not ctx.options.fuse:
        info["note"] = "fusion not requested"
    elif rep.passed:
        try:
            fr: FusionResult = log.run(
                f"fuse {name} for ONNX Runtime", fuse_for_ort, art.path, ctx.work / name / "fused.onnx",
                message=lambda r: ", ".join(f"{k}={v}" for k, v in r.applied.items()) or "no pattern matched",
            )
            fused_rep = ctx.validate_file(name, fr.path, "fp32")
            if fused_rep.passed:
                fr.kept, chosen, rep = True, fr.path, fused_rep
            else:
                fr.note = "fused graph missed the fp32 gate, the unfused one is kept: " + "; ".join(
                    fused_rep.failures()
                )
                log.record(f"gate {name}/fp32 (fused)", FAIL, 0.0, fr.note)
            info = fr.to_dict()
        except ExportError as e:
            info = {"kept": False, "note": f"fusion failed, the unfused graph is kept: {e}"}
    else:
        info["note"] = "not attempted: the exported graph missed the fp32 gate"
    return chosen, rep, info


def export_models(ctx: ExportContext) -> None:
    """Each model to ONNX (dynamo, legacy fallback), gated fp32, fused where that passes too."""
    models = {"reasoner": ctx.src.reasoner, "ranker": ctx.src.ranker}
    for name in MODELS:
        art = ctx.log.run(
            f"export {name} to ONNX", onnx_export.export_onnx, ctx.specs[name], models[name],
            ctx.work / name / "exported.onnx", ctx.options.exporter, ctx.options.external_data_threshold,
            message=_describe_export,
        )
        ctx.exported[name] = art
        chosen, rep, info = _fuse(ctx, name, art, ctx.validate_file(name, art.path, "fp32"))
        ctx.fusion[name] = info
        ctx.fp32[name] = chosen
        ctx.graphs[(name, "fp32")] = chosen
        ctx.report.setdefault("artifacts", {})[f"{name}/fp32"] = {
            "graph": "fused" if info.get("kept") else "unfused", "export": exported_info(art),
            "fusion": info, "checker": check_onnx(chosen), "gate": rep.to_dict(),
        }
        ctx.gate(f"{name}/fp32", rep)


def convert_fp16(ctx: ExportContext) -> None:
    """fp16 from the kept fp32 graph; if that is the fused one and its fp16 version fails to
    convert or misses the gate, once more from the unfused graph (a contrib op may lack an fp16
    path where a plain op has one)."""
    if not ctx.options.wants("fp16"):
        ctx.log.skip("convert to fp16", "not requested")
        return
    for name in MODELS:
        unfused = ctx.exported[name].path
        sources = [ctx.fp32[name]] + ([unfused] if unfused != ctx.fp32[name] else [])
        for i, src in enumerate(sources):
            graph = "fused" if src != unfused else "unfused"
            last = i + 1 == len(sources)
            try:
                path = ctx.log.run(f"convert {name} ({graph}) to fp16", to_fp16, src,
                                   ctx.work / name / f"fp16-{graph}.onnx")
            except ExportError as e:
                if not last:
                    continue
                ctx.gate(f"{name}/fp16", GateReport(f"{name}/fp16", "fp16", problems=[str(e)]))
                break
            rep = ctx.validate_file(name, path, "fp16")
            if rep.passed or last:
                ctx.graphs[(name, "fp16")] = path
                ctx.report["artifacts"][f"{name}/fp16"] = {
                    "graph": graph, "checker": check_onnx(path), "gate": rep.to_dict(),
                }
                ctx.gate(f"{name}/fp16", rep)
                break
            ctx.log.record(f"gate {name}/fp16 ({graph})", FAIL, 0.0,
                           "; ".join(rep.failures()) + "; retrying from the unfused graph")


def calibration_batches(ctx: ExportContext, reasoner: Any) -> dict[str, list]:
    """Calibration feeds for both graphs from real training requests: the reasoner sees their
    prompts, the ranker their encoded features and ``reasoner``'s latent queries (the PyTorch
    reasoner, or the gated fp32 graph once PyTorch's weights are released: they agree to 1e-4)."""
    records = ctx.calibration_records
    if is_external(ctx.fp32["reasoner"]):
        records = records[:BIG_CALIBRATION_REQUESTS]
    out: dict[str, list] = {"reasoner": [], "ranker": []}
    for i in range(0, len(records), CALIBRATION_BATCH):
        b = ctx.pre(records[i : i + CALIBRATION_BATCH])
        feed = {"input_ids": b.input_ids, "attention_mask": b.attention_mask}
        out["reasoner"].append(feed)
        out["ranker"].append({"cat": b.cat, "num": b.num, "query": reasoner(feed)["latent_query"]})
    return out


def calibration_feeds(ctx: ExportContext) -> None:
    """Up front only where static int8 is planned from the start (``--tensorrt``'s QDQ engines, or
    static asked for in ``int8_methods``); the automatic int8 search calibrates on demand, only if
    its static fallback runs (`rgalign.export.int8`)."""
    methods = ctx.options.int8_methods
    if ctx.options.tensorrt or (ctx.options.wants("int8") and methods is not None and "static" in methods):
        ctx.calib = ctx.log.run("calibration feeds", calibration_batches, ctx, ctx.refs["reasoner"],
                                message=lambda c: f"{sum(len(f['input_ids']) for f in c['reasoner'])} training requests")
    elif ctx.options.wants("int8"):
        ctx.log.skip("calibration feeds", "no static int8 planned: calibrated on demand if the int8 search's "
                                          "static fallback runs")


def reference_pipeline(ctx: ExportContext) -> None:
    """The PyTorch pipeline on the held-out requests, once the fp32 gates passed: only for a
    precision gated end to end (int8, int4); at Qwen3-0.6B shape this pass is minutes."""
    if not ctx.options.end_to_end:
        ctx.log.skip("reference (PyTorch) pipeline on held-out requests", "no int8 or int4 requested")
        return
    if ctx.eval_requests is not None and all(r.passed for r in ctx.reports if r.precision == "fp32"):
        torch_pipe = TorchPipeline(ctx.pre, ctx.refs["reasoner"], ctx.refs["ranker"], ctx.src.encoders.intent_ids)
        ctx.reference = ctx.log.run("reference (PyTorch) pipeline on held-out requests", torch_pipe.forward,
                                    ctx.eval_requests.records, message=lambda r: f"{len(r['scores'])} requests")


def release_torch(ctx: ExportContext) -> None:
    """Time each PyTorch model for the quick latency table, then free the reasoner's weights when
    it is LLM-size (its graph has external data): every later step reads the PyTorch outputs
    already computed (parity batches, held-out requests), and the fp16, int8 and int4 steps,
    each holding a copy of the graph, then run without 2.4 GB of PyTorch weights beside them
    (Qwen3-0.6B shape)."""
    threads = ctx.options.threads
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        for name in MODELS:
            ctx.torch_latency[name] = ctx.latency(name, ctx.refs[name])
    finally:
        torch.set_num_threads(before)
    if ctx.options.tensorrt or not is_external(ctx.fp32["reasoner"]):
        ctx.log.skip("release the PyTorch reasoner", "kept: small enough" if not ctx.options.tensorrt
                     else "kept for the TensorRT steps")
        return
    ctx.log.run("release the PyTorch reasoner", ctx.release_torch, "reasoner",
                message=lambda mb: f"{mb:.0f} MiB of weights freed; its outputs on the parity batches and "
                                   "held-out requests are kept")


def pipeline_figures(ctx: ExportContext) -> None:
    """fp16 end to end on the held-out requests: figures for the report (int8's and int4's are
    their gates; fp32's would repeat its 1e-4 parity). Only where the reference pass was made
    for a quantised precision anyway."""
    if ctx.eval_requests is not None and ctx.reference is not None and ctx.options.wants("fp16"):
        runners = [ctx.runner(ctx.graphs[(m, "fp16")]) for m in MODELS]
        pipe = Pipeline(ctx.pre, runners[0], runners[1], ctx.src.encoders.intent_ids)
        outs = ctx.log.run("fp16 pipeline on held-out requests", pipe.forward, ctx.eval_requests.records)
        rep = validate_pipeline(outs, ctx.reference, ctx.eval_requests, "fp16")
        ctx.report["artifacts"]["pipeline/fp16"] = {"gate": rep.to_dict()}
    for precision in ("int8", "int4"):
        e2e = ctx.gate_of(f"pipeline/{precision}")
        if e2e is not None:
            ctx.report["artifacts"][f"pipeline/{precision}"] = {"gate": e2e.to_dict()}


def _latencies(ctx: ExportContext) -> dict[str, Any]:
    """Median ms per call at batch 1 for PyTorch (eager) and every ONNX artifact on the CPU.
    PyTorch's figure is the one measured before its weights were released (`release_torch`).

    With ``threads`` set, PyTorch runs with that many threads too (restored after): on a loaded
    2-core machine PyTorch's OpenMP pool at its default size stalls on every small op (measured:
    ~200 ms per tiny-reasoner call instead of ~2 ms), which would inflate the speed-up figures.
    """
    threads = ctx.options.threads
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        out: dict[str, Any] = {"threads": threads or "default", "batch": 1,
                               "reasoner_tokens": min(LATENCY_SEQ, ctx.src.reasoner.config.max_len)}
        for name in MODELS:
            out[f"{name}/pytorch"] = (ctx.torch_latency[name] if name in ctx.torch_latency
                                      else ctx.latency(name, ctx.refs[name]))
            for precision in ctx.options.precisions:
                path = ctx.graphs.get((name, precision))
                if path is not None:
                    out[f"{name}/{precision}"] = ctx.latency(name, ctx.runner(path))
        return out
    finally:
        torch.set_num_threads(before)


def quick_latency(ctx: ExportContext) -> None:
    """PyTorch eager vs each ONNX artifact (batch 1; reasoner at 64 tokens)."""
    ctx.report["latency_ms"] = ctx.log.run("quick latency", _latencies, ctx)
