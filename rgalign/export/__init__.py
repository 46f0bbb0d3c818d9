"""Export and optimise (SPEC §5): ONNX fp32 / fp16 / int8 and TensorRT, each artifact gated
against PyTorch.

- `export_run(RUN, EXPORT, ...)` (build.py): the whole export, atomic, with manifest and report,
  as registered steps (steps.py) over one `ExportContext` (context.py) and frozen
  `ExportOptions` (options.py); the steps live in onnx_steps.py, int8.py, trt_steps.py, outputs.py.
- specs.py: what each model's export is (names, axes, dummy batches, tolerances).
- onnx_export.py: `export_onnx(spec, model, path) -> OnnxArtifact`, `check_onnx`, IO signatures.
- optimize.py: onnxscript's ORT fusions. precision.py: fp16, int8 dynamic, int8 static QDQ,
  weight-only int8 / int4 (MatMulNBits); int8.py the int8 search, int4.py the int4 step.
- external.py: graphs with ONNX external data (big backbones): found, saved, placed by path.
- validate.py: `validate(artifact, reference, spec, precision, feeds) -> GateReport`, the
  end-to-end `validate_pipeline`, and `GateFailed`.
- reference.py: `TorchRunner`, `TorchPipeline.from_run(RUN)`: the PyTorch reference of the gates.
  (In-process inference on an export is `rgalign.inference`.)
- tensorrt.py: TensorRT engines and GPU ORT sessions (optional import).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Names are imported on first use (PEP 562): `import rgalign.export.specs` alone must not drag in
# every exporter (onnx, onnxscript, TensorRT).
_WHERE = {
    "DEFAULT_OUT": "options", "ExportOptions": "options", "export_run": "build",
    "parse_precisions": "options", "PRECISIONS": "options",
    "EvalRequests": "evaldata",
    "TorchPipeline": "reference", "TorchRunner": "reference",
    "ExportSpec": "specs", "Tolerances": "specs", "ranker_spec": "specs",
    "reasoner_spec": "specs",
    "GateFailed": "validate", "GateReport": "validate", "validate": "validate",
    "validate_pipeline": "validate",
}  # fmt: skip

if TYPE_CHECKING:
    from rgalign.export.build import export_run
    from rgalign.export.evaldata import EvalRequests
    from rgalign.export.options import DEFAULT_OUT, PRECISIONS, ExportOptions, parse_precisions
    from rgalign.export.reference import TorchPipeline, TorchRunner
    from rgalign.export.specs import ExportSpec, Tolerances, ranker_spec, reasoner_spec
    from rgalign.export.validate import GateFailed, GateReport, validate, validate_pipeline


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'rgalign.export' has no attribute {name!r}")
    return getattr(importlib.import_module(f"rgalign.export.{module}"), name)


__all__ = [
    "DEFAULT_OUT",
    "PRECISIONS",
    "EvalRequests",
    "ExportOptions",
    "ExportSpec",
    "GateFailed",
    "GateReport",
    "Tolerances",
    "TorchPipeline",
    "TorchRunner",
    "export_run",
    "parse_precisions",
    "ranker_spec",
    "reasoner_spec",
    "validate",
    "validate_pipeline",
]
