"""Offline graph fusion for ONNX Runtime with onnxscript's ``ort_fusions``.

`fuse_for_ort(src, dst)` rewrites the exported graph into ORT's fused kernels: RMSNorm ->
``SimplifiedLayerNormalization`` (+ ``SkipSimplifiedLayerNormalization`` with the residual add),
LayerNorm + residual -> ``SkipLayerNormalization``, rotary embedding -> ``RotaryEmbedding``,
scaled dot-product attention -> ``MultiHeadAttention``, erf-GELU (+ bias) -> ``Gelu`` /
``BiasGelu``, MatMul + transpose / scale -> ``FusedMatMul``. It returns how many of each fusion
applied and the op-type histogram before and after, for the report.

The fused graph uses ORT contrib ops, so it runs on ONNX Runtime only (CPU, CUDA, and the
TensorRT provider, which hands contrib ops back to CUDA); native TensorRT engines are built from
the unfused graph. Whether the fused graph is kept is decided by the fp32 gate, by the caller.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from rgalign.errors import ExportError
from rgalign.export.external import data_name, is_external
from rgalign.export.onnx_export import check_onnx, op_histogram


@dataclass
class FusionResult:
    path: Path
    fusions: dict[str, int]  # fusion name -> times applied (onnxscript's count)
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    seconds: float
    kept: bool = False  # set by the caller once the fused graph passed its gate
    note: str = ""
    checker: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def applied(self) -> dict[str, int]:
        return {k: v for k, v in self.fusions.items() if v}

    def to_dict(self) -> dict:
        return {
            "fusions_applied": self.applied,
            "nodes_before": sum(self.ops_before.values()),
            "nodes_after": sum(self.ops_after.values()),
            "ops_before": self.ops_before,
            "ops_after": self.ops_after,
            "seconds": round(self.seconds, 2),
            "kept": self.kept,
            "note": self.note,
            "checker": self.checker,
        }


def fuse_for_ort(src: str | os.PathLike, dst: str | os.PathLike) -> FusionResult:
    """Fuse ``src`` for ONNX Runtime into ``dst`` and check the result with onnx's checker.

    A graph with external data is read lazily (onnx_ir maps its weights) and written with its
    weights in ``<dst>.data``.

    Raises `ExportError` when the rewriter or the checker fails (the caller keeps the unfused
    graph and records why).
    """
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    src, dst = Path(src), Path(dst)
    t0 = time.perf_counter()
    before = op_histogram(src)
    try:
        model = ir.load(os.fspath(src))
        model, counts = optimize_for_ort(model)
        model.graph.sort()  # rewrites may append nodes out of order; ONNX requires topological order
        dst.parent.mkdir(parents=True, exist_ok=True)
        if is_external(src):
            (dst.parent / data_name(dst)).unlink(missing_ok=True)
            ir.save(model, os.fspath(dst), external_data=data_name(dst))
        else:
            ir.save(model, os.fspath(dst))
    except Exception as e:  # noqa: BLE001 - a rewriter bug must not fail the export
        text = str(e).strip()
        raise ExportError(f"ORT fusion failed: {type(e).__name__}: {text.splitlines()[0] if text else ''}") from None
    checker = check_onnx(dst)
    return FusionResult(
        path=dst,
        fusions={k: int(v) for k, v in counts.items()},
        ops_before=before,
        ops_after=op_histogram(dst),
        seconds=time.perf_counter() - t0,
        checker=checker,
    )
