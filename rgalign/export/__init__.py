"""Export and optimise (SPEC §5): ONNX fp32 / fp16 / int8 and TensorRT, each artifact gated
against PyTorch, plus in-process inference on the result.

- `export_run(RUN, EXPORT, ...)` (build.py): the whole export, atomic, with manifest and report.
- specs.py: what each model's export is (names, axes, dummy batches, tolerances).
- onnx_export.py: `export_onnx(spec, model, path) -> OnnxArtifact`, `check_onnx`, IO signatures.
- optimize.py: onnxscript's ORT fusions. precision.py: fp16, int8 dynamic, int8 static QDQ.
- validate.py: `validate(artifact, reference, spec, precision, feeds) -> GateReport`, the
  end-to-end `validate_pipeline`, and `GateFailed`.
- pipeline.py: `Pipeline.from_export(EXPORT, precision)`, `TorchPipeline.from_run(RUN)`.
- tensorrt.py: TensorRT engines and GPU ORT sessions (optional import).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Names are imported on first use (PEP 562): `rgalign.export.pipeline` must not drag the exporters
# (torch, onnx, onnxscript) into Triton's python-backend stubs, each of which imports it.
_WHERE = {
    "DEFAULT_OUT": "build", "export_run": "build", "parse_precisions": "build",
    "EvalRequests": "evaldata",
    "Batch": "pipeline", "Pipeline": "pipeline", "Preprocessor": "pipeline", "Ranked": "pipeline",
    "TorchPipeline": "pipeline", "postprocess": "pipeline",
    "PRECISIONS": "specs", "ExportSpec": "specs", "Tolerances": "specs", "ranker_spec": "specs",
    "reasoner_spec": "specs",
    "GateFailed": "validate", "GateReport": "validate", "validate": "validate",
    "validate_pipeline": "validate",
}  # fmt: skip

if TYPE_CHECKING:
    from rgalign.export.build import DEFAULT_OUT, export_run, parse_precisions
    from rgalign.export.evaldata import EvalRequests
    from rgalign.export.pipeline import Batch, Pipeline, Preprocessor, Ranked, TorchPipeline, postprocess
    from rgalign.export.specs import PRECISIONS, ExportSpec, Tolerances, ranker_spec, reasoner_spec
    from rgalign.export.validate import GateFailed, GateReport, validate, validate_pipeline


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'rgalign.export' has no attribute {name!r}")
    return getattr(importlib.import_module(f"rgalign.export.{module}"), name)


__all__ = [
    "DEFAULT_OUT",
    "PRECISIONS",
    "Batch",
    "EvalRequests",
    "ExportSpec",
    "GateFailed",
    "GateReport",
    "Pipeline",
    "Preprocessor",
    "Ranked",
    "Tolerances",
    "TorchPipeline",
    "export_run",
    "parse_precisions",
    "postprocess",
    "ranker_spec",
    "reasoner_spec",
    "validate",
    "validate_pipeline",
]
