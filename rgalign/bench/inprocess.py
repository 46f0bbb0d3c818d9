"""In-process benchmarks: every engine on the reasoner, the ranker and the whole pipeline.

Engines (each a runner ``feeds -> outputs``, see `rgalign.inference.runtime`):

    pytorch-eager          the PyTorch models of the run (the reference every gate compares to)
    pytorch-compile        the same under ``torch.compile`` (inductor); a failure is recorded
    onnxruntime-<p>        EXPORT/<model>/<p>/model.onnx on the CPU, p in the export's precisions
    onnxruntime-<p> on cuda / tensorrt      ORT's GPU providers, where a GPU is present
    tensorrt-<p>           EXPORT/tensorrt/<model>_<p>.plan engines, where a GPU is present

Shapes: the reasoner at every (batch, tokens) in ``batches`` x ``seqs`` (exact token counts, no
padding: `rgalign.bench.inputs.reasoner_feeds`), the ranker at every batch, the pipeline on raw
requests (``Pipeline.__call__``: tokenising, both graphs, top-k) at every batch.

Every CPU engine runs at each thread count in ``threads`` (ORT intra-op threads,
``torch.set_num_threads``); a row records its count and `find_row` takes the fastest, so a ratio
compares engines at their best setting, not thread pools. The full run uses every core *and* 1
thread: on a 2-core machine with anything else running, PyTorch's OpenMP pool at 2 threads stalls
on every small op (measured here: 490 ms per batch-1 reasoner call at 2 threads, 9 ms at 1), and
two ORT sessions of the pipeline spin-wait against each other (50 ms per request at 2 threads,
10 ms at 1): a stalled setting would distort every ratio taken against it. A case that cannot
run is a row with status FAIL or SKIPPED and the reason; nothing here stops the whole benchmark.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rgalign.bench.inputs import ranker_feeds, reasoner_feeds, take
from rgalign.bench.target import Target
from rgalign.bench.timing import Budget, time_calls
from rgalign.progress import FAIL, OK, SKIPPED, Progress, first_line, step_announcer


MODELS = ("reasoner", "ranker", "pipeline")



@dataclass(frozen=True)
class Shapes:
    """Batch sizes and prompt lengths measured. Every default holds SPEC §8's headline case
    (batch 1, 64 tokens); 8 and 32 are a small and a full dynamic batch, 32 / 128 tokens a short
    prompt and the reasoner's max_len."""

    batches: tuple[int, ...] = (1, 8, 32)
    seqs: tuple[int, ...] = (32, 64, 128)

    @classmethod
    def quick(cls) -> Shapes:
        return cls(batches=(1, 8), seqs=(64,))


def gpu_missing() -> str | None:
    """Why the GPU engines are skipped here, or None when a GPU is usable (also the test suite's
    reason to skip `gpu` tests)."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU on this machine"
    return None


def _ort_gpu_reason(provider: str) -> str | None:
    reason = gpu_missing()
    if reason:
        return reason
    import onnxruntime as ort

    name = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}[provider]
    if name not in ort.get_available_providers():
        return f"onnxruntime has no {name} (install onnxruntime-gpu)"
    return None


class InProcessBench:
    """Builds the engines of a `Target` and times them; `run` returns the result rows."""

    def __init__(self, target: Target, shapes: Shapes, budget: Budget, threads: Sequence[int],
                 compile: bool = True, progress: Progress | None = None) -> None:
        self.t = target
        self.shapes = shapes
        self.budget = budget
        self.threads = tuple(threads)  # most first: torch.compile runs at the first only
        self.compile = compile
        self.say = step_announcer(progress)
        self.rows: list[dict[str, Any]] = []
        self._threads_now = self.threads[0]
        max_len = target.pre.max_len if target.pre is not None else max(shapes.seqs)
        self.seqs = tuple(sorted({min(s, max_len) for s in shapes.seqs}))

    # ---- rows ----------------------------------------------------------------------------------

    def _row(self, model: str, engine: str, device: str, batch: int | None, seq: int | None,
             status: str, timing: Any = None, reason: str = "", **extra: Any) -> None:
        row = {"model": model, "engine": engine, "device": device, "batch": batch, "seq": seq,
               "threads": self._threads_now, "status": status, "reason": reason, **extra}
        if timing is not None:
            row.update(timing.to_dict())
        self.rows.append(row)

    def _skip_all(self, engine: str, device: str, reason: str, models: Sequence[str] = MODELS) -> None:
        for model in models:
            self._row(model, engine, device, None, None, SKIPPED, reason=reason)

    def _time(self, model: str, engine: str, device: str, batch: int, seq: int | None,
              fn: Callable[[], Any], **extra: Any) -> None:
        self.say(f"{model} {engine} {device} batch {batch}" + (f" x {seq} tokens" if seq else ""))
        try:
            t0 = time.perf_counter()
            fn()  # the first call apart: it pays compilation / session warm-up, reported as such
            first = time.perf_counter() - t0
            timing = time_calls(fn, batch, self.budget)
        except Exception as e:  # noqa: BLE001 - one failing case is a row, not the end of the run
            self._row(model, engine, device, batch, seq, FAIL, reason=first_line(e, typed=True, limit=300), **extra)
            return
        self._row(model, engine, device, batch, seq, OK, timing, first_call_ms=round(first * 1e3, 3), **extra)

    # ---- per model -----------------------------------------------------------------------------

    def _graph_cases(self, model: str, engine: str, device: str, runner: Callable[[dict], Any]) -> None:
        if model == "reasoner":
            for seq in self.seqs:
                for b in self.shapes.batches:
                    feeds = reasoner_feeds(self.t.pre, self.t.records, b, seq)
                    self._time(model, engine, device, b, seq, lambda f=feeds: runner(f))
        else:
            for b in self.shapes.batches:
                feeds = ranker_feeds(self.t.pre, self.t.records, b, self.t.d_query)
                self._time(model, engine, device, b, None, lambda f=feeds: runner(f))

    def _pipeline_cases(self, engine: str, device: str, pipe: Any) -> None:
        for b in self.shapes.batches:
            recs = take(self.t.records, b)
            tokens = pipe.preprocess(recs).input_ids.shape[1]  # the padded prompt length of this batch
            self._time("pipeline", engine, device, b, None, lambda r=recs: pipe(r, k=3), prompt_tokens=int(tokens))

    # ---- engines -------------------------------------------------------------------------------

    def _torch(self) -> None:
        if self.t.src is None:
            reason = self.t.torch_missing or "no PyTorch models"
            self._skip_all("pytorch-eager", "cpu", reason)
            self._skip_all("pytorch-compile", "cpu", reason)
            return
        from rgalign.export.reference import TorchPipeline
        from rgalign.export.reference import TorchRunner
        from rgalign.export.specs import graph_module, ranker_spec, reasoner_spec

        import torch

        src = self.t.src
        specs = {"reasoner": reasoner_spec(src.reasoner), "ranker": ranker_spec(src.ranker)}
        modules = {"reasoner": src.reasoner, "ranker": src.ranker}
        eager_runners = {m: TorchRunner(graph_module(specs[m], modules[m]), specs[m].input_names,
                                        specs[m].output_names) for m in modules}
        eager_pipe = TorchPipeline.from_models(src.reasoner, src.ranker, src.encoders, src.fields)
        compiled: dict[str, Any] = {}
        if self.compile:
            for model in modules:
                spec = specs[model]
                try:
                    compiled[model] = TorchRunner(torch.compile(graph_module(spec, modules[model])),
                                                  spec.input_names, spec.output_names)
                except Exception as e:  # noqa: BLE001 - inductor missing a compiler, an unsupported op, ...
                    self._skip_all("pytorch-compile", "cpu", f"torch.compile failed: {first_line(e, typed=True, limit=300)}", [model])
        else:
            self._skip_all("pytorch-compile", "cpu", "not requested (--no-compile; off by default with --quick)")
        before = torch.get_num_threads()
        try:
            for threads in self.threads:
                torch.set_num_threads(threads)
                self._threads_now = threads
                for model in modules:
                    self._graph_cases(model, "pytorch-eager", "cpu", eager_runners[model])
                self._pipeline_cases("pytorch-eager", "cpu", eager_pipe)
                if threads != self.threads[0]:
                    continue  # inductor recompiles for another thread count: minutes on a small CPU
                for model, runner in compiled.items():
                    # a failed compilation surfaces at the first call: each case records it
                    self._graph_cases(model, "pytorch-compile", "cpu", runner)
        finally:
            torch.set_num_threads(before)
            self._threads_now = self.threads[0]
        if compiled:
            self._skip_all("pytorch-compile", "cpu", "not measured: the pipeline adds the same tokenising "
                           "and top-k to the compiled graphs as to eager", ["pipeline"])

    def _ort(self, provider: str) -> None:
        from rgalign.inference.pipeline import Pipeline
        from rgalign.inference.runtime import OrtRunner

        device = {"cpu": "cpu", "cuda": "cuda", "tensorrt": "tensorrt"}[provider]
        if self.t.export_dir is None:
            self._skip_all("onnxruntime", device, "a training run: export it to benchmark ONNX Runtime")
            return
        if provider != "cpu":
            reason = _ort_gpu_reason(provider)
            if reason:
                self._skip_all("onnxruntime", device, reason)
                return
        for precision in self.t.precisions:
            engine = f"onnxruntime-{precision}"
            for threads in (self.threads if provider == "cpu" else self.threads[:1]):
                self._threads_now = threads
                runners = {}
                for model in ("reasoner", "ranker"):
                    path = self.t.onnx_path(model, precision)
                    try:
                        if provider == "cpu":
                            runners[model] = OrtRunner.load(path, threads=threads)
                        else:
                            from rgalign.export.tensorrt import gpu_session

                            runners[model] = gpu_session(path, provider, precision=precision)
                    except Exception as e:  # noqa: BLE001
                        self._skip_all(engine, device, f"cannot load {path}: {first_line(e, typed=True, limit=300)}", [model])
                        continue
                    self._graph_cases(model, engine, device, runners[model])
                if len(runners) == 2:
                    pipe = Pipeline(self.t.pre, runners["reasoner"], runners["ranker"], _intent_ids(self.t),
                                    name=engine)
                    self._pipeline_cases(engine, device, pipe)
                    del pipe
                del runners  # free the sessions (and their thread pools) before the next setting
        self._threads_now = self.threads[0]

    def _tensorrt_plans(self) -> None:
        plans = self.t.tensorrt_plans()
        if not plans:
            self._skip_all("tensorrt", "tensorrt", "this export has no TensorRT engines (export --tensorrt on a GPU)"
                           if self.t.export_dir is not None else "no export")
            return
        reason = gpu_missing()
        if reason:
            self._skip_all("tensorrt", "tensorrt", reason)
            return
        from rgalign.export.tensorrt import TrtRunner

        for name, path in plans.items():
            model, _, precision = name.partition("_")
            try:
                runner = TrtRunner(path)
            except Exception as e:  # noqa: BLE001
                self._skip_all(f"tensorrt-{precision}", "tensorrt", first_line(e, typed=True, limit=300), [model])
                continue
            self._graph_cases(model, f"tensorrt-{precision}", "tensorrt", runner)

    def run(self) -> list[dict[str, Any]]:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(self.threads[0])
        try:
            self._ort("cpu")
            self._torch()
            self._ort("cuda")
            self._ort("tensorrt")
            self._tensorrt_plans()
        finally:
            torch.set_num_threads(before)
        return self.rows


def _intent_ids(t: Target) -> list[str]:
    from rgalign.io import read_json

    return read_json(t.export_dir / t.manifest["serving"]["intents"])["intent_ids"]


def find_row(rows: Sequence[dict[str, Any]], model: str, engine: str, device: str = "cpu",
             batch: int | None = None, seq: int | None = None) -> dict[str, Any] | None:
    """The OK row of this case with the lowest p50 (PyTorch is measured at two thread counts), or None."""
    hits = [r for r in rows
            if (r["model"], r["engine"], r["device"], r["status"]) == (model, engine, device, OK)
            and (batch is None or r["batch"] == batch) and (seq is None or r["seq"] == seq)]
    return min(hits, key=lambda r: r["p50_ms"]) if hits else None
