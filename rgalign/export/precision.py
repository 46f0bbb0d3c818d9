"""fp32 graph -> fp16 and int8 graphs.

- **fp16**: ``onnxruntime.transformers.float16.convert_float_to_float16`` with ``keep_io_types``:
  inputs and outputs stay fp32 (a client sends the same tensors to every precision), weights and
  activations inside are fp16. Made for GPUs; on a CPU ONNX Runtime runs many fp16 nodes through
  casts, so it is no faster there.
- **int8, dynamic** (``quantize_dynamic``): weights int8 per output channel, activations quantised
  on the fly per batch. No calibration data; the usual CPU win for transformer MatMuls.
- **int8, static QDQ** (``quantize_static``): activations too, with ranges calibrated on real
  training requests (MinMax, Percentile or Entropy). Symmetric int8 activations and weights in
  QuantizeLinear/DequantizeLinear pairs: the explicit-quantisation form TensorRT builds int8
  engines from.

Both int8 modes quantise only the **weight MatMuls** (MatMul/Gemm whose second input is a
constant initializer). Activation-by-activation products (attention's Q·Kᵀ and weights·V, when
not fused) keep fp32: measured on the reasoner, quantising them too cost 4x more cosine error for
no speed. Embedding lookups stay fp32 as well (a Gather is memory-bound, not compute-bound).

`sensitive_nodes` finds the weight MatMuls whose int8 version alone costs a large share of the
cosine budget; the export's second round of int8 candidates keeps those in fp32 (mixed precision)
when no all-int8 candidate passes its gate.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from rgalign.errors import ExportError

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
WEIGHT_OPS = ("MatMul", "Gemm")


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime.quantization logs "please consider pre-processing" on the root logger and
    prints calibration progress; neither is actionable here."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        import io
        from contextlib import redirect_stdout

        with redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def weight_matmuls(model: onnx.ModelProto) -> list[str]:
    """Names of the MatMul / Gemm nodes whose second input is an initializer (a weight)."""
    inits = {i.name for i in model.graph.initializer}
    consts = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    names = []
    for i, n in enumerate(model.graph.node):
        if n.op_type in WEIGHT_OPS and n.domain in ("", "ai.onnx") and len(n.input) > 1:
            if n.input[1] in inits or n.input[1] in consts:
                if not n.name:  # the quantiser selects nodes by name
                    n.name = f"{n.op_type}_{i}"
                names.append(n.name)
    return names


def _load(src: str | os.PathLike) -> onnx.ModelProto:
    return onnx.load(os.fspath(src))


def to_fp16(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """fp16 weights and compute, fp32 inputs and outputs."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    import onnx_ir as ir

    model = _load(src)
    try:
        with _quiet_quantizer():
            m16 = convert_float_to_float16(model, keep_io_types=True)
        # the converter appends the input casts at the end of the node list; ONNX requires
        # topological order (ORT does not care, onnx's checker and TensorRT do)
        graph = ir.from_proto(m16)
        graph.graph.sort()
        m16 = ir.to_proto(graph)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"fp16 conversion failed: {type(e).__name__}: {e}") from None
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m16, os.fspath(dst))
    return dst


def _int8_target(
    src: str | os.PathLike, dst: str | os.PathLike, what: str, exclude: Sequence[str], only: Sequence[str] | None = None
) -> tuple[onnx.ModelProto, list[str], Path]:
    """(model, the weight MatMuls to quantise, the output path with its folder made)."""
    model = _load(src)
    nodes = [n for n in weight_matmuls(model) if n not in set(exclude) and (only is None or n in set(only))]
    if not nodes:
        raise ExportError(f"int8 {what}: the graph has no weight MatMul to quantise")
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    return model, nodes, dst


def quantize_int8_dynamic(
    src: str | os.PathLike, dst: str | os.PathLike, exclude: Sequence[str] = (), only: Sequence[str] | None = None
) -> Path:
    """int8 weights per output channel, dynamic int8 activations, weight MatMuls only (less
    ``exclude``; ``only``: just these nodes, for a sensitivity probe)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model, nodes, dst = _int8_target(src, dst, "dynamic", exclude, only)
    try:
        with _quiet_quantizer():
            quantize_dynamic(
                model, os.fspath(dst), op_types_to_quantize=list(WEIGHT_OPS), nodes_to_quantize=nodes,
                per_channel=True, weight_type=QuantType.QInt8,
            )
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"int8 dynamic quantisation failed: {type(e).__name__}: {e}") from None
    return dst


class FeedsReader:
    """``onnxruntime.quantization.CalibrationDataReader`` over a list of feeds (dicts of arrays)."""

    def __init__(self, feeds: Iterable[Mapping[str, np.ndarray]]) -> None:
        self._feeds = [dict(f) for f in feeds]
        self._it = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)


def quantize_int8_static(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    calibration: Iterable[Mapping[str, np.ndarray]],
    method: str = "minmax",
    exclude: Sequence[str] = (),
) -> Path:
    """QDQ int8: weights per channel, activations per tensor, both symmetric, ranges calibrated
    on ``calibration`` (feeds of real requests) with ``method`` (minmax | percentile | entropy).

    Percentile keeps 99.999% of the activation histogram (ORT's default), Entropy picks the range
    that minimises the KL divergence; both clip rare outliers that MinMax keeps.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise ExportError(f"unknown calibration {method!r}; use one of {', '.join(CALIBRATION_METHODS)}")
    feeds = list(calibration)
    if not feeds:
        raise ExportError("int8 static quantisation needs calibration requests; none were given")

    class _Reader(FeedsReader, CalibrationDataReader):
        pass

    model, nodes, dst = _int8_target(src, dst, "static", exclude)
    try:
        with _quiet_quantizer():
            quantize_static(
                model, os.fspath(dst), _Reader(feeds), quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(WEIGHT_OPS), nodes_to_quantize=nodes, per_channel=True,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                calibrate_method=methods[method],
                # symmetric activations: zero point 0, as TensorRT's explicit quantisation requires
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
            )
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"int8 static ({method}) quantisation failed: {type(e).__name__}: {e}") from None
    return dst


def sensitive_nodes(
    src: str | os.PathLike,
    workdir: str | os.PathLike,
    cosine: Callable[[Path], float],
    budget: float,
) -> tuple[list[str], dict[str, float]]:
    """Weight MatMuls whose int8 version *alone* costs more than ``budget`` of cosine.

    Each weight MatMul is quantised on its own (dynamic int8, no calibration needed) and
    ``cosine(path)`` measures the graph against the reference; the loss ``1 - cosine`` of each
    node is returned with the list of nodes over ``budget``, worst first. Those stay fp32 in the
    mixed-precision int8 candidates: in an untrained or lightly trained ranker the first AutoInt
    layer (small embeddings, then a LayerNorm that rescales its noise) alone costs ~10x the whole
    int8 cosine budget, while the other 30-odd MatMuls cost almost nothing.
    """
    workdir = Path(workdir)
    losses: dict[str, float] = {}
    for i, node in enumerate(weight_matmuls(_load(src))):
        probe = quantize_int8_dynamic(src, workdir / f"probe_{i}.onnx", only=[node])
        losses[node] = float(1.0 - cosine(probe))
        probe.unlink()
    over = sorted((n for n, loss in losses.items() if loss > budget), key=lambda n: -losses[n])
    return over, losses
