"""The export's last step: put each chosen graph in place with every data file it references,
write what serving needs (tokenizer, encoders, prompt fields, intents), drop the work folder,
load every graph from its final folder (`verify_outputs`: one that cannot load fails the export),
then ``report.json`` and ``manifest.json`` (format: `rgalign.artifacts.manifest`)."""

from __future__ import annotations

import os
import platform
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import rgalign
from rgalign.artifacts.manifest import FORMAT_VERSION, MANIFEST, artifact_key
from rgalign.artifacts.registry import MODELS
from rgalign.artifacts.run import package_versions, sha256_file
from rgalign.errors import ExportError
from rgalign.export.context import ExportContext
from rgalign.export.external import external_files, place
from rgalign.export.onnx_export import io_signature
from rgalign.export.onnx_steps import exported_info
from rgalign.export.steps import OK
from rgalign.io import write_json_atomic


def export_versions() -> dict[str, str]:
    """`package_versions` plus the exporters' own packages."""
    out = package_versions()
    for name in ("onnxscript", "tensorrt", "onnxruntime-gpu"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def write_outputs(ctx: ExportContext, t_start: float) -> dict[str, Any]:
    """The export's files besides the graphs' scratch copies: each chosen graph under
    ``<model>/<precision>/model.onnx``, what serving needs, ``report.json`` and ``manifest.json``."""
    src, tmp, wanted, log, trt_info = ctx.src, ctx.tmp, ctx.options.precisions, ctx.log, ctx.trt_info
    artifacts: dict[str, Any] = {}
    for name in MODELS:
        for precision in wanted:
            key = artifact_key(name, precision)
            dst = tmp / name / precision / "model.onnx"
            written = place(ctx.graphs[(name, precision)], dst)
            gate = ctx.gate_of(key)
            data = [{"path": os.fspath(p.relative_to(tmp)), "sha256": sha256_file(p), "bytes": p.stat().st_size}
                    for p in written[1:]]
            artifacts[key] = {
                "path": f"{name}/{precision}/model.onnx",
                "sha256": sha256_file(dst),
                "bytes": dst.stat().st_size,
                # the weights beside the graph (ONNX external data), each hashed; deploy copies them
                "external_data": data,
                "bytes_total": dst.stat().st_size + sum(d["bytes"] for d in data),
                "precision": precision,
                **io_signature(dst),
                "gate": gate.to_dict() if gate else None,
            }
    for precision in ("int8", "int4"):
        e2e = ctx.gate_of(f"pipeline/{precision}")
        if e2e is not None:
            artifacts[f"pipeline/{precision}"] = {"gate": e2e.to_dict()}
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
    shutil.rmtree(ctx.work, ignore_errors=True)  # nothing below may lean on a scratch file
    log.run("load every artifact from the export folder", verify_outputs, ctx, artifacts,
            message=lambda n: f"{n} graphs loaded by ONNX Runtime from {tmp.name}/, work folder removed")

    k = ctx.specs["ranker"].outputs[1].shape[1]
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
        "versions": export_versions(),
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
        "exporters": {name: exported_info(ctx.exported[name]) for name in MODELS},
        "graphs": {name: "fused" if ctx.fusion[name].get("kept") else "unfused" for name in MODELS},
        "artifacts": artifacts,
        "tolerances": ctx.specs["reasoner"].tolerances.to_dict(),
        "gates_passed": all(r.passed for r in ctx.reports),
        "steps": [],
        "seconds": 0.0,
    }
    log.record("write manifest and report", OK, 0.0, f"{len(artifacts)} artifacts")
    manifest["steps"] = log.to_list()
    manifest["peak_rss_mb"] = log.peak_rss_mb  # the maximum of the steps' peaks (None off Linux)
    manifest["seconds"] = round(time.perf_counter() - t_start, 2)
    write_json_atomic(tmp / "report.json", ctx.report)
    write_json_atomic(tmp / MANIFEST, manifest)
    return manifest


def verify_outputs(ctx: ExportContext, artifacts: dict[str, Any]) -> int:
    """Load every graph of ``artifacts`` from the new export folder with ONNX Runtime and run it
    once at batch 1: each file it references must be there and listed (hashed) in its entry.
    Raises `ExportError` naming the graph, so an export that could not be served is a failed
    export, not a manifest that says ``gates_passed``."""
    n = 0
    for key, art in artifacts.items():
        if not str(art.get("path", "")).endswith(".onnx"):
            continue
        path = ctx.tmp / art["path"]
        listed = {ctx.tmp / d["path"] for d in art.get("external_data", [])}
        missing = [os.fspath(f.relative_to(ctx.tmp)) for f in external_files(path) if f not in listed or not f.is_file()]
        if missing:
            raise ExportError(f"{key}: {art['path']} references {', '.join(missing)}, not in the export folder")
        model = key.split("/")[0]
        try:
            ctx.runner(Path(path))(ctx.latency_feed(model))
        except ExportError as e:
            raise ExportError(f"{key} does not load from the export folder: {e}") from None
        except Exception as e:  # noqa: BLE001 - ORT's own exception types; one line
            raise ExportError(f"{key} does not run from the export folder: {type(e).__name__}: {e}") from None
        n += 1
    return n
