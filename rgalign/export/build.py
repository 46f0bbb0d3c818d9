"""`export_run(RUN, EXPORT)`: a training run's reasoner + QE ranker -> gated ONNX (fp32 / fp16 /
int8) and, on a GPU machine, TensorRT engines, with a manifest and a report (SPEC §5).

    EXPORT/
      manifest.json                          what, from which run (sha256), versions, IO
                                             signatures, per-step status, gate figures
      report.json                            per artifact: parity / quality figures, fusion
                                             counts, int8 candidates, quick latency
      reasoner/{fp32,fp16,int8}/model.onnx   input_ids, attention_mask -> latent_query
      reasoner/tokenizer/                    what serving tokenises prompts with (left padding)
      ranker/{fp32,fp16,int8}/model.onnx     cat, num, query -> scores, topk_scores, topk_idx
      encoders.json  prompt_fields.json  intents.json      what serving needs besides the graphs
      tensorrt/{reasoner,ranker}_{fp16,int8}.plan  + timing.cache       (--tensorrt only)

Steps: load the run -> export each model (dynamo, legacy fallback) -> fp32 gate -> ORT fusion
(kept only if it passes the same gate) -> fp16 -> int8 candidates (dynamic per-channel, static
QDQ with the chosen calibration; if neither passes, both again with the most sensitive MatMuls
kept fp32), each gated per artifact and end to end on held-out requests, the fastest passing one
kept -> TensorRT -> quick latency -> serving files, manifest, report.

Everything is built in a temporary folder beside EXPORT and swapped in only when every gate
passed (`rgalign.io.atomic_dir`): a failed export leaves an existing EXPORT untouched and raises
`GateFailed` (an `ExportError`) listing every missed figure.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

import rgalign
from rgalign.errors import ExportError
from rgalign.export import onnx_export
from rgalign.export.evaldata import EvalRequests, requests_from_dataset
from rgalign.export.onnx_export import check_onnx, io_signature
from rgalign.export.optimize import FusionResult, fuse_for_ort
from rgalign.export.pipeline import Pipeline, Preprocessor, TorchPipeline
from rgalign.export.precision import (
    CALIBRATION_METHODS,
    quantize_int8_dynamic,
    quantize_int8_static,
    sensitive_nodes,
    to_fp16,
)
from rgalign.export.runtime import OrtRunner, Runner, TorchRunner, median_latency_ms
from rgalign.export.source import RunSource, load_run, sha256_file
from rgalign.export.specs import PRECISIONS, ExportSpec, graph_module, ranker_spec, reasoner_spec
from rgalign.export.steps import FAIL, OK, Progress, StepLog
from rgalign.export.validate import GateReport, raise_if_failed, row_cosine, validate, validate_pipeline
from rgalign.io import atomic_dir, write_json_atomic

FORMAT_VERSION = 1
MODELS = ("reasoner", "ranker")
DEFAULT_OUT = "export"  # at the repository root; SPEC §9
# real requests added to the random parity batches, and the batch size of calibration feeds
REAL_BATCH = 8
CALIBRATION_BATCH = 16
LATENCY_SEQ = 64  # the reasoner's quick latency: batch 1 x 64 tokens (a typical prompt)
# a MatMul whose int8 version alone costs more than this share of the int8 cosine budget
# (1 - 0.99) stays fp32 in the round-2 int8 candidates: ten such nodes would spend it all
SENSITIVITY_SHARE = 0.1
# int8 (reasoner, ranker) pairs judged end to end in round 1, fastest first (twice as many in
# round 2): each costs one pass over the held-out requests
MAX_PAIRS = 4
# files of an existing export folder carried into the new one (export/README.md in the repo)
KEPT_FILES = ("README.md", ".gitkeep")


def parse_precisions(precisions: str | Sequence[str]) -> tuple[str, ...]:
    """"fp32,int8" or a sequence -> a tuple in canonical order; `ExportError` on anything else."""
    items = [p.strip() for p in (precisions.split(",") if isinstance(precisions, str) else precisions) if p.strip()]
    unknown = [p for p in items if p not in PRECISIONS]
    if unknown or not items:
        raise ExportError(f"unknown precision(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(PRECISIONS)}")
    return tuple(p for p in PRECISIONS if p in items)


@dataclass
class _State:
    """What the steps share: the source run, specs, references, feeds, and what they produced."""

    src: RunSource
    tmp: Path
    work: Path
    threads: int | None
    specs: dict[str, ExportSpec] = field(default_factory=dict)
    refs: dict[str, Runner] = field(default_factory=dict)
    feeds: dict[str, list[dict[str, np.ndarray]]] = field(default_factory=dict)
    exported: dict[str, onnx_export.OnnxArtifact] = field(default_factory=dict)
    fp32: dict[str, Path] = field(default_factory=dict)  # the fp32 graph each precision is made from
    fusion: dict[str, dict] = field(default_factory=dict)
    artifacts: dict[str, Path] = field(default_factory=dict)  # "reasoner/int8" -> path (in work or tmp)
    reports: list[GateReport] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)


def _package_versions() -> dict[str, str]:
    from rgalign.training.run import package_versions

    out = package_versions()
    for name in ("onnxscript", "tensorrt", "onnxruntime-gpu"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _runner(path: Path, threads: int | None) -> OrtRunner:
    return OrtRunner.load(path, threads=threads)


def _reasoner_reference(src: RunSource) -> TorchRunner:
    return TorchRunner(graph_module(reasoner_spec(src.reasoner), src.reasoner), ["input_ids", "attention_mask"],
                       ["latent_query"])


def _real_feeds(src: RunSource, eval_requests: EvalRequests | None) -> dict[str, list[dict[str, np.ndarray]]]:
    """One batch of real held-out requests per model (prompts as serving tokenises them)."""
    if eval_requests is None or len(eval_requests) == 0:
        return {"reasoner": [], "ranker": []}
    pre = Preprocessor(src.reasoner.tokenizer, src.fields, src.encoders, src.reasoner.config.max_len)
    b = pre(eval_requests.records[:REAL_BATCH])
    ref = _reasoner_reference(src)
    q = ref({"input_ids": b.input_ids, "attention_mask": b.attention_mask})["latent_query"]
    return {
        "reasoner": [{"input_ids": b.input_ids, "attention_mask": b.attention_mask}],
        "ranker": [{"cat": b.cat, "num": b.num, "query": q}],
    }


def _calibration_feeds(src: RunSource, records: list[dict[str, Any]]) -> dict[str, list[dict[str, np.ndarray]]]:
    """Calibration feeds for both graphs from real training requests: the reasoner sees their
    prompts, the ranker their encoded features and the fp32 reasoner's latent queries."""
    pre = Preprocessor(src.reasoner.tokenizer, src.fields, src.encoders, src.reasoner.config.max_len)
    ref = _reasoner_reference(src)
    out: dict[str, list] = {"reasoner": [], "ranker": []}
    for i in range(0, len(records), CALIBRATION_BATCH):
        b = pre(records[i : i + CALIBRATION_BATCH])
        feed = {"input_ids": b.input_ids, "attention_mask": b.attention_mask}
        out["reasoner"].append(feed)
        out["ranker"].append({"cat": b.cat, "num": b.num, "query": ref(feed)["latent_query"]})
    return out


def _latency_feed(spec: ExportSpec, src: RunSource) -> dict[str, np.ndarray]:
    if spec.name == "reasoner":
        t = min(LATENCY_SEQ, src.reasoner.config.max_len)
        ids = np.full((1, t), 5, dtype=np.int64)
        return {"input_ids": ids, "attention_mask": np.ones((1, t), dtype=np.int64)}
    return {k: v[:1] for k, v in spec.batches(1)[0].items()}


def _latency(runner: Runner, feed: dict[str, np.ndarray]) -> float:
    return round(median_latency_ms(lambda: runner(feed)), 4)


def _validate_file(state: _State, name: str, path: Path, precision: str) -> GateReport:
    """Gate one ONNX file of model ``name`` against PyTorch on the parity batches."""
    spec = state.specs[name]
    return validate(_runner(path, state.threads), state.refs[name], spec, precision, state.feeds[name],
                    f"{name}/{precision}")


def _gate(state: _State, log: StepLog, name: str, report: GateReport) -> GateReport:
    state.reports.append(report)
    if report.passed:
        log.record(f"gate {name}", OK, 0.0, "; ".join(f.describe() for f in report.figures if f.gated))
    else:
        log.record(f"gate {name}", FAIL, 0.0, "; ".join(report.failures()))
    return report


def _describe_export(a: onnx_export.OnnxArtifact) -> str:
    return f"{a.exporter} exporter, opset {a.opset}, {a.seconds:.1f} s" + (f"; {a.note}" if a.note else "")


def _export_models(state: _State, log: StepLog, exporter: str, fuse: bool) -> None:
    src = state.src
    for name, model in (("reasoner", src.reasoner), ("ranker", src.ranker)):
        spec = state.specs[name]
        art = log.run(
            f"export {name} to ONNX", onnx_export.export_onnx, spec, model, state.work / name / "exported.onnx",
            exporter, message=_describe_export,
        )
        state.exported[name] = art
        rep = _validate_file(state, name, art.path, "fp32")
        chosen, info = art.path, {"kept": False}
        if not fuse:
            info["note"] = "fusion not requested"
        elif rep.passed:
            try:
                fr: FusionResult = log.run(
                    f"fuse {name} for ONNX Runtime", fuse_for_ort, art.path, state.work / name / "fused.onnx",
                    message=lambda r: ", ".join(f"{k}={v}" for k, v in r.applied.items()) or "no pattern matched",
                )
                fused_rep = _validate_file(state, name, fr.path, "fp32")
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
        state.fusion[name] = info
        state.fp32[name] = chosen
        state.artifacts[f"{name}/fp32"] = chosen
        state.report.setdefault("artifacts", {})[f"{name}/fp32"] = {
            "graph": "fused" if info.get("kept") else "unfused", "export": _exported_info(art),
            "fusion": info, "checker": check_onnx(chosen), "gate": rep.to_dict(),
        }
        _gate(state, log, f"{name}/fp32", rep)


def _fp16(state: _State, log: StepLog) -> None:
    """fp16 from the kept fp32 graph; if that is the fused one and its fp16 version fails to
    convert or misses the gate, once more from the unfused graph (a contrib op may lack an fp16
    path where a plain op has one)."""
    for name in MODELS:
        sources = [state.fp32[name]]
        if state.exported[name].path != state.fp32[name]:
            sources.append(state.exported[name].path)
        for i, src in enumerate(sources):
            graph = "fused" if src != state.exported[name].path else "unfused"
            dst = state.work / name / f"fp16-{graph}.onnx"
            try:
                path = log.run(f"convert {name} ({graph}) to fp16", to_fp16, src, dst)
            except ExportError as e:
                rep = GateReport(f"{name}/fp16", "fp16", problems=[str(e)])
                if i + 1 < len(sources):
                    continue
                _gate(state, log, f"{name}/fp16", rep)
                break
            rep = _validate_file(state, name, path, "fp16")
            if rep.passed or i + 1 == len(sources):
                state.artifacts[f"{name}/fp16"] = path
                state.report["artifacts"][f"{name}/fp16"] = {
                    "graph": graph, "checker": check_onnx(path), "gate": rep.to_dict(),
                }
                _gate(state, log, f"{name}/fp16", rep)
                break
            log.record(f"gate {name}/fp16 ({graph})", FAIL, 0.0,
                       "; ".join(rep.failures()) + "; retrying from the unfused graph")


@dataclass
class _Int8Candidate:
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


def _int8_candidate(
    state: _State, log: StepLog, name: str, method: str, calibration: str,
    calib: dict[str, list[dict[str, np.ndarray]]], exclude: list[str],
) -> _Int8Candidate:
    """Quantise model ``name`` with ``method`` (``exclude``'s MatMuls stay fp32), gate it, time it."""
    label = method + ("+fp32-sensitive" if exclude else "")
    cand = _Int8Candidate(name, label, list(exclude))
    dst = state.work / "int8" / label / f"{name}.onnx"
    t0 = time.perf_counter()
    try:
        if method == "dynamic":
            quantize_int8_dynamic(state.fp32[name], dst, exclude=exclude)
        else:
            quantize_int8_static(state.fp32[name], dst, calib[name], calibration, exclude=exclude)
        check_onnx(dst)
    except ExportError as e:
        cand.error = str(e)
        log.record(f"quantize {name} int8 {label}", FAIL, time.perf_counter() - t0, str(e))
        return cand
    cand.path = dst
    runner = _runner(dst, state.threads)
    cand.report = validate(runner, state.refs[name], state.specs[name], "int8", state.feeds[name],
                           f"{name}/int8({label})")
    cand.latency_ms = _latency(runner, _latency_feed(state.specs[name], state.src))
    message = "passed" if cand.passed else "; ".join(cand.report.failures())
    message += f"; {cand.latency_ms:.3g} ms at batch 1" + (f"; {len(exclude)} MatMuls kept fp32" if exclude else "")
    log.record(f"quantize {name} int8 {label}", OK if cand.passed else FAIL, time.perf_counter() - t0, message)
    return cand


def _fp32_fallback(state: _State, log: StepLog, name: str) -> _Int8Candidate:
    """Model ``name``'s fp32 graph as the int8 deployment's member, gated and timed like an int8
    candidate (method "fp32": the manifest says plainly that this part is not quantised)."""
    cand = _Int8Candidate(name, "fp32", [], path=state.fp32[name])
    runner = _runner(cand.path, state.threads)
    cand.report = validate(runner, state.refs[name], state.specs[name], "int8", state.feeds[name], f"{name}/int8(fp32)")
    cand.latency_ms = _latency(runner, _latency_feed(state.specs[name], state.src))
    log.record(f"candidate {name} fp32 in the int8 deployment", OK if cand.passed else FAIL, 0.0,
               f"beside the int8 {name}s of round 2; {cand.latency_ms:.3g} ms at batch 1")
    return cand


def _sensitivity(state: _State, name: str) -> tuple[list[str], dict[str, float]]:
    spec, ref, feeds = state.specs[name], state.refs[name], state.feeds[name]
    want = [ref(f)[spec.gated_output] for f in feeds]

    def cosine(path: Path) -> float:
        run = _runner(path, state.threads)
        got = [run(f)[spec.gated_output] for f in feeds]
        return float(np.concatenate([row_cosine(g, w, spec.centre_gated) for g, w in zip(got, want)]).mean())

    budget = SENSITIVITY_SHARE * (1.0 - spec.tolerances.int8_cosine)
    return sensitive_nodes(state.fp32[name], state.work / "int8" / "probes" / name, cosine, budget)


def _int8(
    state: _State,
    log: StepLog,
    calibration: str,
    calib: dict[str, list[dict[str, np.ndarray]]],
    eval_requests: EvalRequests,
    reference: dict[str, np.ndarray],
    pre: Preprocessor,
) -> None:
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
    methods = ("dynamic", f"static-{calibration}")
    cands: dict[str, list[_Int8Candidate]] = {
        name: [_int8_candidate(state, log, name, m, calibration, calib, []) for m in methods] for name in MODELS
    }
    tried: list[tuple[str, str, GateReport]] = []  # (reasoner method, ranker method, end-to-end gate)

    def pick(limit: int) -> tuple[_Int8Candidate, _Int8Candidate, GateReport] | None:
        done = {(r, k) for r, k, _ in tried}
        pairs = sorted(
            ((r, k) for r in cands["reasoner"] if r.passed for k in cands["ranker"] if k.passed
             if (r.method, k.method) not in done),
            key=lambda p: p[0].latency_ms + p[1].latency_ms,
        )
        for r, k in pairs[:limit]:
            label = f"reasoner {r.method} + ranker {k.method}"
            pipe = Pipeline(pre, _runner(r.path, state.threads), _runner(k.path, state.threads),
                            state.src.encoders.intent_ids)
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
        for name in MODELS:
            over, losses = log.run(f"int8 sensitivity of {name}", _sensitivity, state, name,
                                   message=lambda r: f"{len(r[0])} of {len(r[1])} MatMuls over budget")
            sensitivity[name] = {"fp32_nodes": over, "cosine_loss": {k: round(v, 6) for k, v in losses.items()}}
            if over:
                cands[name] += [_int8_candidate(state, log, name, m, calibration, calib, over) for m in methods]
        # the ranker's int8 graphs are no faster than fp32 on this CPU (seed 0: 0.7-1.3 ms vs 0.65 ms)
        cands["ranker"].append(_fp32_fallback(state, log, "ranker"))
        chosen = pick(2 * MAX_PAIRS)  # about twice round 1's candidates

    state.report["int8_candidates"] = {name: [c.to_dict() for c in cs] for name, cs in cands.items()}
    state.report["int8_pairs"] = [{"reasoner": r, "ranker": k, "gate": rep.to_dict()} for r, k, rep in tried]
    if sensitivity:
        state.report["int8_sensitivity"] = sensitivity
    if chosen is None:
        # every candidate's and every tried pair's failures
        for cs in cands.values():
            for c in cs:
                state.reports.append(c.report or GateReport(f"{c.model}/int8({c.method})", "int8", problems=[c.error]))
        state.reports += [rep for _, _, rep in tried]
        if not tried:
            problem = "no int8 reasoner and ranker pair passed their own gates"
            state.reports.append(GateReport("pipeline/int8", "int8", problems=[problem]))
        log.record("choose int8", FAIL, 0.0, "no int8 pair passed its gates")
        return
    r, k, e2e = chosen
    for c in (r, k):
        state.artifacts[f"{c.model}/int8"] = c.path
        c.report.artifact = f"{c.model}/int8"
        state.report["artifacts"][f"{c.model}/int8"] = {
            "method": c.method, "fp32_nodes": c.fp32_nodes, "checker": check_onnx(c.path), "gate": c.report.to_dict(),
        }
        state.reports.append(c.report)
    e2e.artifact = "pipeline/int8"
    state.reports.append(e2e)
    log.record("choose int8", OK, 0.0, f"reasoner {r.method} ({r.latency_ms:.3g} ms), ranker {k.method} "
               f"({k.latency_ms:.3g} ms)")


def _tensorrt(state: _State, log: StepLog, calibration: str, calib: dict, eval_requests: EvalRequests | None,
              reference: dict[str, np.ndarray] | None, pre: Preprocessor | None) -> dict[str, Any]:
    """fp16 and int8 engines of both models, gated like their ONNX twins; ORT GPU providers checked."""
    from rgalign.export import tensorrt as trt_mod

    src = state.src
    rc = src.ranker.config
    profiles = {
        "reasoner": trt_mod.reasoner_profile(src.reasoner.config.max_len),
        "ranker": trt_mod.ranker_profile(len(rc.cardinalities), rc.n_numeric, rc.d_query),
    }
    out_dir = state.tmp / "tensorrt"
    cache = out_dir / "timing.cache"
    info: dict[str, Any] = {"profiles": {k: v.to_dict() for k, v in profiles.items()}, "engines": {}}
    for precision in ("fp16", "int8"):
        runners = {}
        for name in MODELS:
            onnx_path = state.exported[name].path  # unfused: TensorRT knows no ORT contrib ops
            if precision == "int8":
                onnx_path = log.run(f"QDQ graph of {name} for TensorRT", quantize_int8_static, onnx_path,
                                    state.work / "trt" / f"{name}_qdq.onnx", calib[name], calibration)
            plan = log.run(f"build TensorRT {name} {precision}", trt_mod.build_engine, onnx_path,
                           out_dir / f"{name}_{precision}.plan", profiles[name], precision, cache)
            runners[name] = trt_mod.TrtRunner(plan)
            rep = validate(runners[name], state.refs[name], state.specs[name], precision, state.feeds[name],
                           f"tensorrt/{name}_{precision}")
            _gate(state, log, f"tensorrt/{name}_{precision}", rep)
            info["engines"][f"{name}_{precision}"] = {
                "path": f"tensorrt/{name}_{precision}.plan", "sha256": sha256_file(plan), "gate": rep.to_dict(),
                "latency_ms": _latency(runners[name], _latency_feed(state.specs[name], src)),
            }
        if eval_requests is not None and reference is not None and pre is not None:
            pipe = Pipeline(pre, runners["reasoner"], runners["ranker"], src.encoders.intent_ids)
            outs = pipe.forward(eval_requests.records)
            rep = validate_pipeline(outs, reference, eval_requests, precision, name=f"tensorrt/pipeline_{precision}")
            _gate(state, log, f"tensorrt/pipeline_{precision}", rep)
            info["engines"][f"pipeline_{precision}"] = {"gate": rep.to_dict()}
    # ONNX Runtime on the GPU: the providers a session uses are checked, a CPU fall back raises
    for provider, precision in (("cuda", "fp32"), ("tensorrt", "fp16")):
        for name in MODELS:
            path = state.artifacts.get(f"{name}/fp32") if provider == "cuda" else state.exported[name].path
            runner = log.run(f"ONNX Runtime {provider} session for {name}", trt_mod.gpu_session, path, provider,
                             profiles[name], precision, state.work / "ort_trt_cache")
            rep = validate(runner, state.refs[name], state.specs[name], precision, state.feeds[name],
                           f"onnxruntime-{provider}/{name}_{precision}")
            _gate(state, log, f"onnxruntime-{provider}/{name}_{precision}", rep)
            info.setdefault("onnxruntime_gpu", {})[f"{provider}/{name}_{precision}"] = {
                "providers": runner.session.get_providers(), "gate": rep.to_dict(),
                "latency_ms": _latency(runner, _latency_feed(state.specs[name], src)),
            }
    return info


def export_run(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike = DEFAULT_OUT,
    precisions: str | Sequence[str] = PRECISIONS,
    tensorrt: bool = False,
    calibration: str = "minmax",
    eval_requests: EvalRequests | None = None,
    calibration_records: Sequence[dict[str, Any]] | None = None,
    exporter: str = "dynamo",
    fuse: bool = True,
    threads: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Export a training run's deployable reasoner + QE ranker pair; returns the manifest.

    Args:
        run_dir: the folder ``rgalign train --out`` wrote.
        out_dir: the export folder; replaced atomically, and only when every gate passes.
        precisions: any of fp32, fp16, int8 ("fp32,int8" or a sequence). The fp32 graph is
            built (and gated) in any case: the other precisions are made from it.
        tensorrt: also build TensorRT engines (fp16, int8) and check ORT's GPU providers; needs a
            CUDA GPU and TensorRT, else `ExportError` before any work.
        calibration: static int8 calibration, minmax | percentile | entropy.
        eval_requests: held-out requests for the end-to-end int8 gate; default: the test split of
            the run's dataset (``run.json`` data.path). int8 without either is an `ExportError`.
        calibration_records: raw training requests for static int8; default: 256 from the run's
            train split, else the held-out requests (noted in the report).
        exporter: "dynamo" (legacy fallback on failure) or "legacy".
        fuse: apply onnxscript's ORT fusions (kept only where they pass the fp32 gate).
        threads: ONNX Runtime intra-op threads for gates and latencies (None: ORT's default).
        progress: ``progress(step, status, message)`` on every step start (status START) and end.

    Raises:
        GateFailed (an ExportError): an artifact missed its gate; the message lists every missed
            figure and ``out_dir`` is left as it was.
        ExportError: the run cannot be exported (missing files, exporter failure, no TensorRT).
    """
    wanted = parse_precisions(precisions)
    if calibration not in CALIBRATION_METHODS:
        raise ExportError(f"unknown calibration {calibration!r}; choose from {', '.join(CALIBRATION_METHODS)}")
    if tensorrt:
        from rgalign.export.tensorrt import require_tensorrt

        require_tensorrt()  # one clear line before any work
    import torch

    torch_threads = torch.get_num_threads()
    if threads is not None:  # the PyTorch reference runs beside ORT: same budget, see _latencies
        torch.set_num_threads(int(threads))
    try:
        return _export_run(Path(run_dir), Path(out_dir), wanted, tensorrt, calibration, eval_requests,
                           calibration_records, exporter, fuse, threads, progress)
    finally:
        torch.set_num_threads(torch_threads)


def _export_run(
    run_dir: Path,
    out_dir: Path,
    wanted: tuple[str, ...],
    tensorrt: bool,
    calibration: str,
    eval_requests: EvalRequests | None,
    calibration_records: Sequence[dict[str, Any]] | None,
    exporter: str,
    fuse: bool,
    threads: int | None,
    progress: Progress | None,
) -> dict[str, Any]:
    _check_out_dir(out_dir)
    t_start = time.perf_counter()
    log = StepLog(progress)
    src = log.run("load run", load_run, run_dir,
                  message=lambda s: f"reasoner {s.reasoner_dir.relative_to(s.root)}, "
                                    f"ranker {s.ranker_dir.relative_to(s.root)}")

    notes: list[str] = []
    if (eval_requests is None or calibration_records is None) and src.data_path is not None:
        ds_eval, ds_calib = log.run(
            "load held-out and calibration requests", requests_from_dataset, src.data_path, src.encoders,
            message=lambda r: f"{len(r[0])} held-out, {len(r[1])} calibration requests from {src.data_path}",
        )
        eval_requests = eval_requests if eval_requests is not None else ds_eval
        calibration_records = calibration_records if calibration_records is not None else ds_calib
    if "int8" in wanted and eval_requests is None:
        raise ExportError(
            "int8 is gated on held-out requests (top-10 overlap, GAUC drop) and this run's dataset "
            f"({(src.run_json.get('data') or {}).get('path', 'not recorded')}) is not there: pass "
            "eval_requests, restore the dataset, or export --precision fp32,fp16"
        )
    if tensorrt and eval_requests is None and calibration_records is None:
        raise ExportError(
            "--tensorrt builds an int8 engine from a QDQ graph calibrated on training requests, and this run's "
            "dataset is not there: pass calibration_records or restore the dataset"
        )
    if calibration_records is None and eval_requests is not None:
        calibration_records = list(eval_requests.records)
        notes.append("static int8 calibrated on the held-out requests: no training requests were available")

    with atomic_dir(out_dir) as tmp:
        work = tmp / ".work"
        state = _State(src=src, tmp=tmp, work=work, threads=threads)
        state.report = {"artifacts": {}, "notes": notes, "tolerances": None}
        real = _real_feeds(src, eval_requests)
        for name, model in (("reasoner", src.reasoner), ("ranker", src.ranker)):
            spec = reasoner_spec(model) if name == "reasoner" else ranker_spec(model)
            state.specs[name] = spec
            state.refs[name] = TorchRunner(graph_module(spec, model), spec.input_names, spec.output_names)
            state.feeds[name] = spec.batches(0) + real[name]
        state.report["tolerances"] = state.specs["reasoner"].tolerances.to_dict()
        state.report["parity_batches"] = {
            name: [{k: list(v.shape) for k, v in f.items()} for f in feeds] for name, feeds in state.feeds.items()
        }

        _export_models(state, log, exporter, fuse)

        pre = Preprocessor(src.reasoner.tokenizer, src.fields, src.encoders, src.reasoner.config.max_len)
        if "fp16" in wanted:
            _fp16(state, log)
        else:
            log.skip("convert to fp16", "not requested")
        calib = {"reasoner": [], "ranker": []}
        if "int8" in wanted or tensorrt:
            calib = log.run("calibration feeds", _calibration_feeds, src, list(calibration_records or []),
                            message=lambda c: f"{sum(len(f['input_ids']) for f in c['reasoner'])} training requests")
        reference = None  # the PyTorch pipeline on the held-out requests, once the fp32 gates passed
        if eval_requests is not None and all(r.passed for r in state.reports if r.precision == "fp32"):
            torch_pipe = TorchPipeline(pre, state.refs["reasoner"], state.refs["ranker"], src.encoders.intent_ids)
            reference = log.run("reference (PyTorch) pipeline on held-out requests", torch_pipe.forward,
                                eval_requests.records, message=lambda r: f"{len(r['scores'])} requests")
        if "int8" in wanted and reference is None:
            log.skip("quantize int8", "the fp32 graphs missed their gate")
        elif "int8" in wanted:
            _int8(state, log, calibration, calib, eval_requests, reference, pre)
        else:
            log.skip("quantize int8", "not requested")

        # every ONNX gate, every failure listed; on failure atomic_dir drops tmp, EXPORT stays as it was
        raise_if_failed(state.reports, what=f"export of {os.fspath(run_dir)}")

        # fp16 end to end on the held-out requests: figures for the report (int8's are its gate;
        # fp32's would repeat its 1e-4 parity)
        if eval_requests is not None and reference is not None and "fp16" in wanted:
            runners = [_runner(state.artifacts[f"{m}/fp16"], threads) for m in MODELS]
            pipe = Pipeline(pre, runners[0], runners[1], src.encoders.intent_ids)
            outs = log.run("fp16 pipeline on held-out requests", pipe.forward, eval_requests.records)
            rep = validate_pipeline(outs, reference, eval_requests, "fp16")
            state.report["artifacts"]["pipeline/fp16"] = {"gate": rep.to_dict()}
        e2e = next((r for r in state.reports if r.artifact == "pipeline/int8"), None)
        if e2e is not None:
            state.report["artifacts"]["pipeline/int8"] = {"gate": e2e.to_dict()}

        trt_info = None
        if tensorrt:
            trt_info = _tensorrt(state, log, calibration, calib, eval_requests, reference, pre)
            state.report["tensorrt"] = trt_info
            raise_if_failed(state.reports, what=f"TensorRT export of {os.fspath(run_dir)}")
        else:
            log.skip("TensorRT engines", "not requested (--tensorrt)")

        # quick latency: PyTorch eager vs each ONNX artifact (batch 1; reasoner at 64 tokens)
        state.report["latency_ms"] = log.run("quick latency", _latencies, state, wanted, threads)

        manifest = _write_outputs(state, wanted, log, trt_info, t_start)
        for name in KEPT_FILES:  # the folder's own README (export/ at the repo root has one)
            if (out_dir / name).is_file():
                shutil.copyfile(out_dir / name, tmp / name)
        shutil.rmtree(work, ignore_errors=True)
    return manifest


def _check_out_dir(out_dir: Path) -> None:
    """Refuse to replace a folder that is neither empty nor an export: the swap replaces it whole."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and not (out_dir / "manifest.json").is_file():
        other = sorted(p.name for p in out_dir.iterdir() if p.name not in KEPT_FILES)
        if other:
            raise ExportError(
                f"{out_dir} is not empty and holds no export (no manifest.json; it has {', '.join(other[:3])}"
                f"{', ...' if len(other) > 3 else ''}): choose an empty or new folder for --out"
            )


def _exported_info(art: onnx_export.OnnxArtifact) -> dict[str, Any]:
    d = art.to_dict()
    d.pop("path")  # a temporary file
    return d


def _latencies(state: _State, wanted: tuple[str, ...], threads: int | None) -> dict[str, Any]:
    """Median ms per call at batch 1 for PyTorch (eager) and every ONNX artifact on the CPU.

    With ``threads`` set, PyTorch runs with that many threads too (restored after): on a loaded
    2-core machine PyTorch's OpenMP pool at its default size stalls on every small op (measured:
    ~200 ms per tiny-reasoner call instead of ~2 ms), which would inflate the speed-up figures.
    """
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        out: dict[str, Any] = {"threads": threads or "default", "batch": 1,
                               "reasoner_tokens": min(LATENCY_SEQ, state.src.reasoner.config.max_len)}
        for name in MODELS:
            feed = _latency_feed(state.specs[name], state.src)
            out[f"{name}/pytorch"] = _latency(state.refs[name], feed)
            for precision in wanted:
                path = state.artifacts.get(f"{name}/{precision}")
                if path is not None:
                    out[f"{name}/{precision}"] = _latency(_runner(path, threads), feed)
        return out
    finally:
        torch.set_num_threads(before)


def _write_outputs(
    state: _State, wanted: tuple[str, ...], log: StepLog, trt_info: dict | None, t_start: float
) -> dict[str, Any]:
    src, tmp = state.src, state.tmp
    artifacts: dict[str, Any] = {}
    for name in MODELS:
        for precision in wanted:
            key = f"{name}/{precision}"
            dst = tmp / name / precision / "model.onnx"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(state.artifacts[key], dst)
            gate = next((r for r in state.reports if r.artifact == key), None)
            artifacts[key] = {
                "path": f"{name}/{precision}/model.onnx",
                "sha256": sha256_file(dst),
                "bytes": dst.stat().st_size,
                "precision": precision,
                **io_signature(dst),
                "gate": gate.to_dict() if gate else None,
            }
    e2e = next((r for r in state.reports if r.artifact == "pipeline/int8"), None)
    if e2e is not None:
        artifacts["pipeline/int8"] = {"gate": e2e.to_dict()}
    if trt_info:
        for key, eng in trt_info["engines"].items():
            if "path" in eng:
                artifacts[f"tensorrt/{key}"] = {"path": eng["path"], "sha256": eng["sha256"], "gate": eng["gate"]}

    # what serving needs besides the graphs
    src.reasoner.tokenizer.save_pretrained(tmp / "reasoner" / "tokenizer")
    src.encoders.to_json(tmp / "encoders.json")
    write_json_atomic(tmp / "prompt_fields.json", src.fields.to_dict())
    intents = {"intent_ids": src.encoders.intent_ids, "intent_texts": src.encoders.intent_texts}
    write_json_atomic(tmp / "intents.json", intents)

    k = state.specs["ranker"].outputs[1].shape[1]
    manifest = {
        "format_version": FORMAT_VERSION,
        "rgalign_version": rgalign.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": {
            "run": os.fspath(src.root.resolve()),
            "reasoner": os.fspath(src.reasoner_dir.relative_to(src.root)),
            "ranker": os.fspath(src.ranker_dir.relative_to(src.root)),
            "files_sha256": src.model_files(),
            "data": (src.run_json.get("data") or {}),
        },
        "versions": _package_versions(),
        "host": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "precisions": list(wanted),
        "serving": {
            "tokenizer": "reasoner/tokenizer",
            "padding_side": "left",
            "max_prompt_length": int(src.reasoner.config.max_len),
            "encoders": "encoders.json",
            "prompt_fields": "prompt_fields.json",
            "intents": "intents.json",
            "n_intents": int(src.ranker.config.n_intents),
            "d_query": int(src.reasoner.config.d_query),
            "topk": int(k),
        },
        "exporters": {name: _exported_info(state.exported[name]) for name in MODELS},
        "graphs": {name: "fused" if state.fusion[name].get("kept") else "unfused" for name in MODELS},
        "artifacts": artifacts,
        "tolerances": state.specs["reasoner"].tolerances.to_dict(),
        "gates_passed": all(r.passed for r in state.reports),
        "steps": [],
        "seconds": 0.0,
    }
    log.record("write manifest and report", OK, 0.0, f"{len(artifacts)} artifacts")
    manifest["steps"] = log.to_list()
    manifest["seconds"] = round(time.perf_counter() - t_start, 2)
    write_json_atomic(tmp / "report.json", state.report)
    write_json_atomic(tmp / "manifest.json", manifest)
    return manifest
