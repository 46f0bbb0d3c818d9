"""The one typed context the export steps share: the source run, the options, the per-model
specs, PyTorch references and parity feeds, the held-out and calibration requests, and what the
steps produce (graphs by (model, precision), gate reports, the report). Built once by
`rgalign.export.build`; each step reads what earlier steps wrote, as named fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rgalign.errors import ExportError
from rgalign.export.evaldata import EvalRequests
from rgalign.export.onnx_export import OnnxArtifact
from rgalign.export.options import ExportOptions
from rgalign.export.reference import TorchRunner
from rgalign.export.source import RunSource
from rgalign.export.specs import ExportSpec, graph_module, ranker_spec, reasoner_spec
from rgalign.export.steps import FAIL, OK, StepLog
from rgalign.export.validate import GateReport, validate
from rgalign.inference.preprocess import Preprocessor
from rgalign.inference.runtime import OrtRunner, Runner, median_latency_ms

Feeds = list[dict[str, np.ndarray]]
LATENCY_SEQ = 64  # the reasoner's quick latency: batch 1 x 64 tokens (a typical prompt)


@dataclass
class ExportContext:
    """What the steps share. ``graphs[(model, precision)]``: the chosen ONNX file of each."""

    src: RunSource
    options: ExportOptions
    log: StepLog
    tmp: Path  # the new export folder, swapped in when every gate passed
    eval_requests: EvalRequests | None
    calibration_records: list[dict[str, Any]]
    specs: dict[str, ExportSpec]
    refs: dict[str, TorchRunner]  # the PyTorch reference of each model
    pre: Preprocessor  # built once: prompts and features as serving prepares them
    feeds: dict[str, Feeds] = field(default_factory=dict)  # parity batches per model
    calib: dict[str, Feeds] = field(default_factory=lambda: {"reasoner": [], "ranker": []})
    reference: dict[str, np.ndarray] | None = None  # PyTorch pipeline on the held-out requests
    exported: dict[str, OnnxArtifact] = field(default_factory=dict)
    fp32: dict[str, Path] = field(default_factory=dict)  # the fp32 graph each precision is made from
    fusion: dict[str, dict] = field(default_factory=dict)
    graphs: dict[tuple[str, str], Path] = field(default_factory=dict)
    reports: list[GateReport] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)  # report.json
    trt_info: dict[str, Any] | None = None
    # PyTorch eager ms per batch-1 call of each model, measured before its weights are released
    torch_latency: dict[str, float] = field(default_factory=dict)
    released: set[str] = field(default_factory=set)  # models whose PyTorch weights are gone
    # PyTorch outputs per (model, id(parity feed)): the feeds live as long as the context
    _ref_cache: dict[tuple[str, int], dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    @classmethod
    def create(cls, src: RunSource, options: ExportOptions, log: StepLog, tmp: Path,
               eval_requests: EvalRequests | None, calibration_records: list[dict[str, Any]]) -> ExportContext:
        specs = {"reasoner": reasoner_spec(src.reasoner), "ranker": ranker_spec(src.ranker)}
        models = {"reasoner": src.reasoner, "ranker": src.ranker}
        refs = {name: TorchRunner(graph_module(spec, models[name]), spec.input_names, spec.output_names)
                for name, spec in specs.items()}
        pre = Preprocessor(src.reasoner.tokenizer, src.fields, src.encoders, src.reasoner.config.max_len)
        return cls(src, options, log, tmp, eval_requests, calibration_records, specs, refs, pre)

    @property
    def work(self) -> Path:
        """Scratch files of the steps (removed before the swap)."""
        return self.tmp / ".work"

    # ---- helpers the steps share ---------------------------------------------------------------

    def runner(self, path: Path) -> OrtRunner:
        return OrtRunner.load(path, threads=self.options.threads)

    def validate_file(self, name: str, path: Path, precision: str, label: str | None = None) -> GateReport:
        """Gate one ONNX file of model ``name`` against PyTorch on the parity batches; a graph
        ONNX Runtime cannot load fails its gate with the reason (never raised through)."""
        label = label or f"{name}/{precision}"
        try:
            runner = self.runner(path)
        except ExportError as e:
            return GateReport(label, precision, problems=[str(e)])
        return self.validate_runner(name, runner, precision, label)

    def validate_runner(self, name: str, runner: Runner, precision: str, label: str) -> GateReport:
        return validate(runner, self.reference_outputs(name), self.specs[name], precision, self.feeds[name], label)

    def reference_outputs(self, name: str) -> Runner:
        """Model ``name``'s PyTorch reference on its parity batches, each computed once: every
        gate compares against the same outputs (at Qwen3-0.6B shape one pass is ~20 s of CPU,
        and an export runs some ten gates)."""
        ref = self.refs[name]

        def run(feed: Any) -> dict[str, np.ndarray]:
            key = (name, id(feed))
            if key not in self._ref_cache:
                self._ref_cache[key] = ref(feed)
            return self._ref_cache[key]

        run.input_names, run.output_names = ref.input_names, ref.output_names  # type: ignore[attr-defined]
        return run

    def release_torch(self, name: str) -> float:
        """Free model ``name``'s PyTorch weights (its reference outputs on the parity batches stay
        cached, and every later gate reads those); returns the MiB of parameters freed. A later
        uncached reference call is an `ExportError`, never a silent wrong answer."""
        import torch

        module = self.refs[name].module
        freed = 0
        with torch.no_grad():
            for p in {id(p): p for p in module.parameters()}.values():  # tied weights once
                freed += p.numel() * p.element_size()
                p.data = torch.empty(0, dtype=p.dtype)
        self.refs[name] = _Released(name, self.refs[name].input_names, self.refs[name].output_names)
        self.released.add(name)
        return freed / 2**20

    def gate(self, name: str, report: GateReport) -> GateReport:
        """Record a gate's outcome: in the reports (raised on later if failed) and the step log."""
        self.reports.append(report)
        if report.passed:
            self.log.record(f"gate {name}", OK, 0.0, "; ".join(f.describe() for f in report.figures if f.gated))
        else:
            self.log.record(f"gate {name}", FAIL, 0.0, "; ".join(report.failures()))
        return report

    def latency_feed(self, name: str) -> dict[str, np.ndarray]:
        if name == "reasoner":
            t = min(LATENCY_SEQ, self.src.reasoner.config.max_len)
            ids = np.full((1, t), 5, dtype=np.int64)
            return {"input_ids": ids, "attention_mask": np.ones((1, t), dtype=np.int64)}
        return {k: v[:1] for k, v in self.specs[name].batches(1)[0].items()}

    def latency(self, name: str, runner: Runner) -> float:
        """Median ms of one batch-1 call of model ``name`` on ``runner``."""
        feed = self.latency_feed(name)
        return round(median_latency_ms(lambda: runner(feed)), 4)

    def gate_of(self, key: str) -> GateReport | None:
        return next((r for r in self.reports if r.artifact == key), None)


class _Released:
    """The reference runner of a model whose PyTorch weights were freed."""

    def __init__(self, name: str, input_names: list[str], output_names: list[str]) -> None:
        self.name, self.input_names, self.output_names = name, input_names, output_names

    def __call__(self, feeds: Any) -> dict[str, np.ndarray]:
        raise ExportError(f"the PyTorch {self.name} was released to save memory; only its outputs on the parity "
                          "batches and held-out requests are kept (a step that needs more must run before "
                          "'release PyTorch weights')")
