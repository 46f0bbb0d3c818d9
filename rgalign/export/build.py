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

Steps (`STEPS`, each a function of one `ExportContext`, recording OK / FAIL / SKIPPED and its
peak RSS in the manifest's step log): load the run -> export each model (dynamo, legacy fallback)
-> fp32 gate -> ORT fusion (kept only if it passes the same gate) -> calibration latents (only
where static int8 is planned up front: --tensorrt or --int8-methods static) and the PyTorch
pipeline on held-out requests (when int8 / int4 are asked for) -> the PyTorch reasoner's
weights freed when it is LLM-size -> fp16 -> int8 candidates (dynamic per-channel, weight-only
for an LLM-size reasoner; static QDQ only where it can be chosen, else skipped with the reason
in the log and report; if no pair passes, again with the most sensitive MatMuls kept fp32),
each gated per artifact and end to end on held-out requests, the fastest passing one
kept -> int4 (weight-only reasoner, only when asked) -> TensorRT -> quick latency -> serving files,
manifest, report -> every artifact loaded by ONNX Runtime from the new folder (the work folder
gone first): an export whose graphs cannot load from where they ship is a failed export.

Big backbones: a graph whose weights pass ``external_data_threshold`` bytes (default protobuf's
2 GB limit less a margin) is written with ONNX external data, and every step works on it by path
(`rgalign.export.external`); each artifact folder carries its ``model.onnx.data`` beside
``model.onnx`` and the manifest hashes both.

Everything is built in a temporary folder beside EXPORT and swapped in only when every gate
passed (`rgalign.io.atomic_dir`): a failed export leaves an existing EXPORT untouched and raises
`GateFailed` (an `ExportError`) listing every missed figure.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rgalign.errors import ExportError
from rgalign.export.context import ExportContext
from rgalign.export.evaldata import EvalRequests, requests_from_dataset
from rgalign.export.int4 import quantize_int4
from rgalign.export.int8 import quantize_int8
from rgalign.export.onnx_steps import (
    calibration_feeds,
    convert_fp16,
    export_models,
    parity_feeds,
    pipeline_figures,
    quick_latency,
    reference_pipeline,
    release_torch,
)
from rgalign.export.options import (
    DEFAULT_OUT,
    DEFAULT_PRECISIONS,
    INT8_SEARCH_SECONDS,
    ExportOptions,
    parse_int8_methods,
    parse_precisions,
)
from rgalign.export.external import PROTO_LIMIT
from rgalign.export.outputs import write_outputs
from rgalign.export.source import RunSource, load_run
from rgalign.export.steps import Progress, Step, StepLog
from rgalign.export.trt_steps import tensorrt_engines
from rgalign.export.validate import raise_if_failed
from rgalign.io import atomic_dir

__all__ = ["DEFAULT_OUT", "STEPS", "export_run"]

# files of an existing export folder carried into the new one (export/README.md in the repo)
KEPT_FILES = ("README.md", ".gitkeep")


def _check_onnx_gates(ctx: ExportContext) -> None:
    """Every ONNX gate, every failure listed; on failure atomic_dir drops the new folder and the
    old EXPORT stays as it was."""
    raise_if_failed(ctx.reports, what=f"export of {os.fspath(ctx.src.root)}")


# The export, in order. A new stage: a function of the context, one entry here.
# Every PyTorch pass (parity references, calibration latents, the held-out reference) comes
# before "release torch", which frees an LLM-size reasoner's weights for the conversions after it.
STEPS: tuple[Step, ...] = (
    Step("parity feeds", parity_feeds),
    Step("export", export_models),
    Step("calibration", calibration_feeds),
    Step("reference", reference_pipeline),
    Step("release torch", release_torch),
    Step("fp16", convert_fp16),
    Step("int8", quantize_int8),
    Step("int4", quantize_int4),
    Step("onnx gates", _check_onnx_gates),
    Step("pipeline figures", pipeline_figures),
    Step("tensorrt", tensorrt_engines),
    Step("quick latency", quick_latency),
)


def export_run(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike = DEFAULT_OUT,
    precisions: str | Sequence[str] = DEFAULT_PRECISIONS,
    tensorrt: bool = False,
    calibration: str = "minmax",
    eval_requests: EvalRequests | None = None,
    calibration_records: Sequence[dict[str, Any]] | None = None,
    exporter: str = "dynamo",
    fuse: bool = True,
    threads: int | None = None,
    progress: Progress | None = None,
    external_data_threshold: int = PROTO_LIMIT,
    int8_search_seconds: float = INT8_SEARCH_SECONDS,
    int8_methods: str | Sequence[str] | None = None,
) -> dict[str, Any]:
    """Export a training run's deployable reasoner + QE ranker pair; returns the manifest.

    Args:
        run_dir: the folder ``rgalign train --out`` wrote.
        out_dir: the export folder; replaced atomically, and only when every gate passes.
        precisions: any of fp32, fp16, int8, int4 ("fp32,int8" or a sequence; default
            fp32, fp16, int8). The fp32 graph is built (and gated) in any case: the other
            precisions are made from it.
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
        external_data_threshold: graphs whose weights pass this many bytes are written with
            ONNX external data (``model.onnx`` + ``model.onnx.data``).
        int8_search_seconds: time budget of the int8 search's sensitivity probes (round 2).
        int8_methods: the int8 candidates to try, any of dynamic, static, weight-only ("dynamic,static"
            or a sequence; weight-only is the reasoner's only). None or "auto": dynamic, weight-only
            for an LLM-size reasoner, and static QDQ only with ``tensorrt`` or as a fallback
            (`rgalign.export.int8.int8_plan`).

    Raises:
        GateFailed (an ExportError): an artifact missed its gate; the message lists every missed
            figure and ``out_dir`` is left as it was.
        ExportError: the run cannot be exported (missing files, exporter failure, no TensorRT).
    """
    options = ExportOptions(parse_precisions(precisions), tensorrt, calibration, exporter, fuse, threads,
                            int(external_data_threshold), float(int8_search_seconds),
                            parse_int8_methods(int8_methods))
    if tensorrt:
        from rgalign.export.tensorrt import require_tensorrt

        require_tensorrt()  # one clear line before any work
    torch_threads = torch.get_num_threads()
    if threads is not None:  # the PyTorch reference runs beside ORT: same budget, see _latencies
        torch.set_num_threads(int(threads))
    try:
        return _export_run(Path(run_dir), Path(out_dir), options, eval_requests, calibration_records, progress)
    finally:
        torch.set_num_threads(torch_threads)


def _requests(
    src: RunSource, options: ExportOptions, log: StepLog, eval_requests: EvalRequests | None,
    calibration_records: Sequence[dict[str, Any]] | None,
) -> tuple[EvalRequests | None, list[dict[str, Any]], list[str]]:
    """(held-out requests, calibration records, notes): the caller's, else the run's dataset's."""
    notes: list[str] = []
    if (eval_requests is None or calibration_records is None) and src.data_path is not None:
        ds_eval, ds_calib = log.run(
            "load held-out and calibration requests", requests_from_dataset, src.data_path, src.encoders,
            message=lambda r: f"{len(r[0])} held-out, {len(r[1])} calibration requests from {src.data_path}",
        )
        eval_requests = eval_requests if eval_requests is not None else ds_eval
        calibration_records = calibration_records if calibration_records is not None else ds_calib
    if options.end_to_end and eval_requests is None:
        raise ExportError(
            f"{'int8' if options.wants('int8') else 'int4'} is gated on held-out requests (top-10 overlap, GAUC drop) and this run's dataset "
            f"({(src.run_json.get('data') or {}).get('path', 'not recorded')}) is not there: pass "
            "eval_requests, restore the dataset, or export --precision fp32,fp16"
        )
    if options.tensorrt and eval_requests is None and calibration_records is None:
        raise ExportError(
            "--tensorrt builds an int8 engine from a QDQ graph calibrated on training requests, and this run's "
            "dataset is not there: pass calibration_records or restore the dataset"
        )
    if calibration_records is None and eval_requests is not None:
        calibration_records = list(eval_requests.records)
        notes.append("static int8 calibrated on the held-out requests: no training requests were available")
    return eval_requests, list(calibration_records or []), notes


def _export_run(
    run_dir: Path,
    out_dir: Path,
    options: ExportOptions,
    eval_requests: EvalRequests | None,
    calibration_records: Sequence[dict[str, Any]] | None,
    progress: Progress | None,
) -> dict[str, Any]:
    _check_out_dir(out_dir)
    t_start = time.perf_counter()
    log = StepLog(progress)
    src = log.run("load run", load_run, run_dir,
                  message=lambda s: f"reasoner {s.reasoner_dir.relative_to(s.root)}, "
                                    f"ranker {s.ranker_dir.relative_to(s.root)}")
    eval_requests, records, notes = _requests(src, options, log, eval_requests, calibration_records)
    with atomic_dir(out_dir) as tmp:
        ctx = ExportContext.create(src, options, log, tmp, eval_requests, records)
        ctx.report = {"artifacts": {}, "notes": notes, "tolerances": None}
        for step in STEPS:
            step.run(ctx)
        manifest = write_outputs(ctx, t_start)
        for name in KEPT_FILES:  # the folder's own README (export/ at the repo root has one)
            if (out_dir / name).is_file():
                shutil.copyfile(out_dir / name, tmp / name)
        shutil.rmtree(ctx.work, ignore_errors=True)
    return manifest


def _check_out_dir(out_dir: Path) -> None:
    """Refuse to replace a folder that is neither empty nor an export: the swap replaces it whole.
    And find out now, before minutes of work, whether the export can be written beside it."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a folder")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=f".{out_dir.name}.probe.", dir=out_dir.parent))
    except OSError as e:
        raise ExportError(f"cannot write the export {out_dir}: {out_dir.parent}: {e.strerror or e}; "
                          "choose a writable --out") from None
    if out_dir.is_dir() and not (out_dir / "manifest.json").is_file():
        other = sorted(p.name for p in out_dir.iterdir() if p.name not in KEPT_FILES)
        if other:
            raise ExportError(
                f"{out_dir} is not empty and holds no export (no manifest.json; it has {', '.join(other[:3])}"
                f"{', ...' if len(other) > 3 else ''}): choose an empty or new folder for --out"
            )
