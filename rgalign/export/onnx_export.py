"""PyTorch -> ONNX: `export_onnx(spec, model, path) -> OnnxArtifact`, plus the checks every file
gets (`check_onnx`), its IO signature and its op histogram.

Exporter, measured on this project's models (torch 2.13, transformers 5): the dynamo exporter
(``torch.onnx.export(..., dynamo=True)``) at opset 18 with ``external_data=False`` gives parity to
about 1e-7 with the eager model, and a graph onnxscript's ORT fusions understand (RMSNorm,
rotary embedding, attention). The legacy TorchScript exporter (opset 17) is the fallback when
dynamo fails on some other backbone; it is about 10x faster to run but its graphs fuse less.
Either way the file is self-contained (weights inside) while the weights stay under
``external_threshold`` (default: protobuf's 2 GB limit less a margin); a larger backbone is
written with its weights as external data beside the graph (`rgalign.export.external`).
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from rgalign.errors import ExportError
from rgalign.export.external import PROTO_LIMIT, is_external, load_graph, save_model, wants_external
from rgalign.export.specs import ExportSpec, graph_module
from rgalign.progress import first_line

DYNAMO_OPSET = 18
LEGACY_OPSET = 17

_ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.BOOL: "bool",
}


@dataclass(frozen=True)
class OnnxArtifact:
    """One exported graph on disk and how it was made."""

    path: Path
    exporter: str  # "dynamo" or "legacy"
    opset: int
    seconds: float
    note: str = ""  # why the fallback was used, when it was

    def to_dict(self) -> dict:
        return {"path": os.fspath(self.path), "exporter": self.exporter, "opset": self.opset,
                "seconds": round(self.seconds, 2), "note": self.note}


@contextlib.contextmanager
def _quiet():
    """The exporters print progress and warn about things that do not concern a user (missing
    torchvision ops, deprecated pytree specs); keep the CLI's output readable."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def _param_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def _torch_export(spec: ExportSpec, module: nn.Module, **exporter_args: Any) -> Any:
    """``torch.onnx.export`` of ``module`` on the spec's example inputs, under the spec's input and
    output names; ``exporter_args``: what the dynamo or the legacy exporter needs besides."""
    return torch.onnx.export(
        module, spec.example, input_names=spec.input_names, output_names=spec.output_names, **exporter_args
    )


def _export_dynamo(spec: ExportSpec, module: nn.Module, path: Path, external: bool) -> None:
    from torch.export import Dim

    dims: dict[str, object] = {}
    shapes = {}
    for name, axes in spec.dynamic_shapes.items():
        shapes[name] = {}
        for axis, (dim_name, lo, hi) in axes.items():
            if dim_name not in dims:
                dims[dim_name] = Dim(dim_name, min=lo, max=hi) if hi is not None else Dim(dim_name, min=lo)
            shapes[name][axis] = dims[dim_name]
    with _quiet():
        program = _torch_export(spec, module, dynamo=True, opset_version=DYNAMO_OPSET, dynamic_shapes=shapes,
                                external_data=external, optimize=True, verbose=False)
        program.save(os.fspath(path), external_data=external)


def _export_legacy(spec: ExportSpec, module: nn.Module, path: Path) -> None:
    axes: dict[str, dict[int, str]] = {
        name: {axis: dim_name for axis, (dim_name, _, _) in ax.items()} for name, ax in spec.dynamic_shapes.items()
    }
    for out in spec.outputs:
        axes[out.name] = {i: d for i, d in enumerate(out.shape) if isinstance(d, str)}
    with _quiet():
        _torch_export(spec, module, f=os.fspath(path), dynamo=False, opset_version=LEGACY_OPSET, dynamic_axes=axes,
                      do_constant_folding=True)


def export_onnx(
    spec: ExportSpec, model: nn.Module, path: str | os.PathLike, exporter: str = "dynamo",
    external_threshold: int = PROTO_LIMIT,
) -> OnnxArtifact:
    """Export ``model`` as ``spec`` describes to ``path`` (a ``model.onnx``) and check the file.

    ``exporter``: "dynamo" (falls back to "legacy" when dynamo raises, and says why in
    ``note``) or "legacy". Weights over ``external_threshold`` bytes go to external data beside
    ``path``. Raises `ExportError` when no exporter succeeds.
    """
    if exporter not in ("dynamo", "legacy"):
        raise ExportError(f"unknown exporter {exporter!r}; use 'dynamo' or 'legacy'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = graph_module(spec, model)
    external = wants_external(_param_bytes(module), external_threshold)
    note = ""
    t0 = time.perf_counter()
    if exporter == "dynamo":
        try:
            _export_dynamo(spec, module, path, external)
            art = OnnxArtifact(path, "dynamo", DYNAMO_OPSET, time.perf_counter() - t0)
            check_onnx(path)
            return art
        except Exception as e:  # noqa: BLE001 - any dynamo failure -> try the legacy exporter
            note = f"dynamo exporter failed ({first_line(e, typed=True)}); used the legacy exporter"
            for p in path.parent.glob(path.name + "*"):
                p.unlink()
            t0 = time.perf_counter()
    try:
        _export_legacy(spec, module, path)
        if external and not is_external(path):  # torch writes external data only past 2 GB
            save_model(onnx.load(os.fspath(path)), path, external=True)
    except Exception as e:  # noqa: BLE001
        raise ExportError(
            f"cannot export the {spec.name} to ONNX: {first_line(e, typed=True)}" + (f" (after: {note})" if note else "")
        ) from None
    art = OnnxArtifact(path, "legacy", LEGACY_OPSET, time.perf_counter() - t0, note)
    check_onnx(path)
    return art


# ORT contrib ops that ORT registers in the *default* ONNX domain (onnx's checker knows no schema
# for them); the ones the ORT fusions emit
ORT_DEFAULT_DOMAIN_CONTRIB = frozenset({"SimplifiedLayerNormalization"})


def check_onnx(path: str | os.PathLike) -> str:
    """Run ``onnx.checker.check_model`` (full check: schemas and shape inference) on ``path``,
    *by path*: a graph with external data is checked with its weights where they are, never
    loaded into one protobuf (over 2 GB it could not be).

    onnx's checker skips nodes of other domains (``com.microsoft``), but ORT also registers a few
    contrib ops in the default domain (``SimplifiedLayerNormalization`` from the RMSNorm fusion)
    and the checker rejects those as unknown. Such nodes are moved to a private domain in a copy
    of the graph alone (its weights still referenced, so the copy sits beside ``path``), which is
    checked instead and removed; they are listed in the returned note, and ONNX Runtime
    validates them when it loads the graph (every artifact is loaded by its gate). Raises
    `ExportError`.
    """
    path = Path(path)
    checked = path
    try:
        model = load_graph(path)
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        unknown = sorted({
            n.op_type for n in model.graph.node
            if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type, "")
        })
        if unknown:
            if set(unknown) - ORT_DEFAULT_DOMAIN_CONTRIB:
                raise ExportError(f"{path}: unknown ONNX ops {', '.join(unknown)}")
            for n in model.graph.node:
                if n.op_type in unknown and n.domain in ("", "ai.onnx"):
                    n.domain = "ai.onnxruntime.checked_elsewhere"
            model.opset_import.append(onnx.helper.make_opsetid("ai.onnxruntime.checked_elsewhere", 1))
            checked = path.parent / f".checker-{path.name}"
            onnx.save_model(model, os.fspath(checked))  # the graph alone; tensors stay references
        onnx.checker.check_model(os.fspath(checked), full_check=True)
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - checker errors are ValidationError, InferenceError...
        raise ExportError(f"onnx.checker rejects {path}: {first_line(e, typed=True)}") from None
    finally:
        if checked != path:
            checked.unlink(missing_ok=True)
    note = f"onnx.checker OK (opset {opset})"
    if unknown:
        note += f"; ORT contrib ops in the default domain checked by ONNX Runtime: {', '.join(unknown)}"
    return note


def _dim(d: onnx.TensorShapeProto.Dimension) -> int | str:
    if d.HasField("dim_value"):
        return int(d.dim_value)
    return d.dim_param or "?"


def io_signature(path: str | os.PathLike) -> dict[str, list[dict]]:
    """``{"inputs": [...], "outputs": [...]}`` with name, dtype and shape (symbolic dims by name)."""
    model = load_graph(path)

    def sig(values) -> list[dict]:
        out = []
        for v in values:
            t = v.type.tensor_type
            out.append({
                "name": v.name,
                "dtype": _ONNX_DTYPES.get(t.elem_type, onnx.TensorProto.DataType.Name(t.elem_type).lower()),
                "shape": [_dim(d) for d in t.shape.dim],
            })
        return out

    return {"inputs": sig(model.graph.input), "outputs": sig(model.graph.output)}


def op_histogram(path_or_model: str | os.PathLike | onnx.ModelProto) -> dict[str, int]:
    """Count of nodes per op type (``domain::op`` for non-default domains), most frequent first."""
    model = (
        path_or_model if isinstance(path_or_model, onnx.ModelProto)
        else load_graph(path_or_model)
    )
    counts = collections.Counter(
        n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}" for n in model.graph.node
    )
    return dict(counts.most_common())
