"""TensorRT: fp16 and int8 engines of both models (int8 from a QDQ graph calibrated on training
requests), each gated like its ONNX twin, and ONNX Runtime's CUDA / TensorRT providers checked
by the providers a session really uses (a CPU fall back is an error). GPU machines only.
"""

from __future__ import annotations

from typing import Any

from rgalign.artifacts.registry import MODELS, TRT_PRECISIONS
from rgalign.artifacts.run import sha256_file
from rgalign.export.context import ExportContext
from rgalign.export.precision import quantize_int8_static
from rgalign.export.validate import raise_if_failed, validate_pipeline
from rgalign.inference.pipeline import Pipeline


def _engines(ctx: ExportContext) -> dict[str, Any]:
    """fp16 and int8 engines of both models, gated like their ONNX twins; ORT GPU providers checked."""
    from rgalign.export import tensorrt as trt_mod

    src, log, eval_requests, reference = ctx.src, ctx.log, ctx.eval_requests, ctx.reference
    rc = src.ranker.config
    profiles = {
        "reasoner": trt_mod.reasoner_profile(src.reasoner.config.max_len),
        "ranker": trt_mod.ranker_profile(len(rc.cardinalities), rc.n_numeric, rc.d_query),
    }
    out_dir = ctx.tmp / "tensorrt"
    cache = out_dir / "timing.cache"
    info: dict[str, Any] = {"profiles": {k: v.to_dict() for k, v in profiles.items()}, "engines": {}}
    for precision in TRT_PRECISIONS:
        runners = {}
        for name in MODELS:
            onnx_path = ctx.exported[name].path  # unfused: TensorRT knows no ORT contrib ops
            if precision == "int8":
                onnx_path = log.run(f"QDQ graph of {name} for TensorRT", quantize_int8_static, onnx_path,
                                    ctx.work / "trt" / f"{name}_qdq.onnx", ctx.calib[name], ctx.options.calibration)
            plan = log.run(f"build TensorRT {name} {precision}", trt_mod.build_engine, onnx_path,
                           out_dir / f"{name}_{precision}.plan", profiles[name], precision, cache)
            runners[name] = trt_mod.TrtRunner(plan)
            rep = ctx.gate(f"tensorrt/{name}_{precision}",
                           ctx.validate_runner(name, runners[name], precision, f"tensorrt/{name}_{precision}"))
            info["engines"][f"{name}_{precision}"] = {
                "path": f"tensorrt/{name}_{precision}.plan", "sha256": sha256_file(plan), "gate": rep.to_dict(),
                "latency_ms": ctx.latency(name, runners[name]),
            }
        if eval_requests is not None and reference is not None:
            pipe = Pipeline(ctx.pre, runners["reasoner"], runners["ranker"], src.encoders.intent_ids)
            outs = pipe.forward(eval_requests.records)
            rep = validate_pipeline(outs, reference, eval_requests, precision, name=f"tensorrt/pipeline_{precision}")
            ctx.gate(f"tensorrt/pipeline_{precision}", rep)
            info["engines"][f"pipeline_{precision}"] = {"gate": rep.to_dict()}
    # ONNX Runtime on the GPU: the providers a session uses are checked, a CPU fall back raises
    for provider, precision in (("cuda", "fp32"), ("tensorrt", "fp16")):
        for name in MODELS:
            path = ctx.graphs.get((name, "fp32")) if provider == "cuda" else ctx.exported[name].path
            runner = log.run(f"ONNX Runtime {provider} session for {name}", trt_mod.gpu_session, path, provider,
                             profiles[name], precision, ctx.work / "ort_trt_cache")
            label = f"onnxruntime-{provider}/{name}_{precision}"
            rep = ctx.gate(label, ctx.validate_runner(name, runner, precision, label))
            info.setdefault("onnxruntime_gpu", {})[f"{provider}/{name}_{precision}"] = {
                "providers": runner.session.get_providers(), "gate": rep.to_dict(),
                "latency_ms": ctx.latency(name, runner),
            }
    return info


def tensorrt_engines(ctx: ExportContext) -> None:
    """The TensorRT step (``--tensorrt``): engines, their gates, raised on at once if any failed."""
    if not ctx.options.tensorrt:
        ctx.log.skip("TensorRT engines", "not requested (--tensorrt)")
        return
    ctx.trt_info = _engines(ctx)
    ctx.report["tensorrt"] = ctx.trt_info
    raise_if_failed(ctx.reports, what=f"TensorRT export of {ctx.src.root}")
