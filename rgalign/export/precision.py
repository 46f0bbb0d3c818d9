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

- **weight-only int8 / int4** (``MatMulNBits`` through ORT's ``MatMulNBitsQuantizer``): weights
  quantised per block (``block_size`` columns share a scale), activations stay float; what LLM
  runtimes ship. ``accuracy_level`` 4 lets ORT's CPU kernel compute with int8 activations (its
  fast path). int4 is the `int4` precision; weight-only int8 is one more int8 reasoner candidate.

`sensitive_nodes` finds the weight MatMuls whose int8 version alone costs a large share of the
cosine budget; the export's second round of int8 candidates keeps those in fp32 (mixed precision)
when no all-int8 candidate passes its gate. Its probes are bounded (`sensitive_nodes`).

Every function here reads its source graph **by path** and writes its result with external data
when the source has it (`rgalign.export.external`): a 2.4 GB graph is never one protobuf.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from rgalign.errors import ExportError
from rgalign.export.external import data_name, is_external, load_graph
from rgalign.progress import first_line

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


def named_graph(src: str | os.PathLike) -> tuple[Path, list[str]]:
    """(a path to ``src``'s graph with every weight MatMul named, those names).

    The quantisers select nodes by name. When some weight MatMul has none, a copy of the graph
    alone (its weights still referenced, so it sits beside ``src``) names them; else ``src``.
    """
    src = Path(src)
    model = load_graph(src)
    unnamed = any(not n.name for n in model.graph.node if n.op_type in WEIGHT_OPS)
    nodes = weight_matmuls(model)
    if not unnamed:
        return src, nodes
    named = src.parent / f"named-{src.name}"
    onnx.save_model(model, os.fspath(named))
    return named, nodes


def _output(dst: str | os.PathLike) -> Path:
    """``dst`` with its folder made and no stale weight file (onnx appends to one)."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    (dst.parent / data_name(dst)).unlink(missing_ok=True)
    return dst


def to_fp16(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """fp16 weights and compute, fp32 inputs and outputs. Read by path (the converter infers
    shapes on the file, which works past 2 GB), written with external data when ``src`` has it."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    import onnx_ir as ir

    dst = _output(dst)
    try:
        with _quiet_quantizer():
            m16 = convert_float_to_float16(os.fspath(src), keep_io_types=True)
        # the converter appends the input casts at the end of the node list; ONNX requires
        # topological order (ORT does not care, onnx's checker and TensorRT do)
        model = ir.from_proto(m16)
        del m16
        model.graph.sort()
        if is_external(src):
            ir.save(model, os.fspath(dst), external_data=data_name(dst))
        else:
            ir.save(model, os.fspath(dst))
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"fp16 conversion failed: {first_line(e, typed=True)}") from None
    return dst


def _int8_target(
    src: str | os.PathLike, dst: str | os.PathLike, what: str, exclude: Sequence[str], only: Sequence[str] | None = None
) -> tuple[Path, list[str], Path]:
    """(the graph's path with its MatMuls named, the weight MatMuls to quantise, the output path
    with its folder made)."""
    path, names = named_graph(src)
    nodes = [n for n in names if n not in set(exclude) and (only is None or n in set(only))]
    if not nodes:
        raise ExportError(f"int8 {what}: the graph has no weight MatMul to quantise")
    return path, nodes, _output(dst)


def quantize_int8_dynamic(
    src: str | os.PathLike, dst: str | os.PathLike, exclude: Sequence[str] = (), only: Sequence[str] | None = None
) -> Path:
    """int8 weights per output channel, dynamic int8 activations, weight MatMuls only (less
    ``exclude``; ``only``: just these nodes, for a sensitivity probe)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path, nodes, dst = _int8_target(src, dst, "dynamic", exclude, only)
    try:
        with _quiet_quantizer():
            quantize_dynamic(
                os.fspath(path), os.fspath(dst), op_types_to_quantize=list(WEIGHT_OPS), nodes_to_quantize=nodes,
                per_channel=True, weight_type=QuantType.QInt8, use_external_data_format=is_external(path),
            )
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"int8 dynamic quantisation failed: {first_line(e, typed=True)}") from None
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

    path, nodes, dst = _int8_target(src, dst, "static", exclude)
    external = is_external(path)
    try:
        with _quiet_quantizer():
            quantize_static(
                os.fspath(path), os.fspath(dst), _Reader(feeds), quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(WEIGHT_OPS), nodes_to_quantize=nodes, per_channel=True,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                calibrate_method=methods[method],
                # the calibrator's augmented graph is as big as the model: external data too
                use_external_data_format=external,
                # symmetric activations: zero point 0, as TensorRT's explicit quantisation requires.
                # (Not CalibMaxIntermediateOutputs: ORT 1.32 then ends with "No data is collected"
                # when the batch count divides by it; a big graph calibrates on fewer requests.)
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
            )
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"int8 static ({method}) quantisation failed: {first_line(e, typed=True)}") from None
    return dst


# weight-only block sizes: int4 needs small blocks to keep its error down (32 is the usual
# choice for LLMs); 8 bits has 16x the levels, so one scale per 128 weights costs little
WEIGHT_ONLY_BLOCK = {4: 32, 8: 128}


def quantize_weight_only(src: str | os.PathLike, dst: str | os.PathLike, bits: int) -> Path:
    """``MatMulNBits``: each weight MatMul's weights as ``bits``-bit integers per block of
    `WEIGHT_ONLY_BLOCK` values (symmetric), activations float; embedding lookups stay fp32."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    if bits not in WEIGHT_ONLY_BLOCK:
        raise ExportError(f"weight-only quantisation to {bits} bits: use one of {sorted(WEIGHT_ONLY_BLOCK)}")
    path, nodes = named_graph(src)
    if not nodes:
        raise ExportError(f"int{bits} weight-only: the graph has no weight MatMul to quantise")
    dst = _output(dst)
    block = WEIGHT_ONLY_BLOCK[bits]
    try:
        with _quiet_quantizer():
            config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, accuracy_level=4, bits=bits)
            quant = MatMulNBitsQuantizer(os.fspath(path), bits=bits, block_size=block, is_symmetric=True,
                                         accuracy_level=4, algo_config=config)
            quant.process()
            quant.model.save_model_to_file(os.fspath(dst), use_external_data_format=is_external(path))
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"int{bits} weight-only quantisation failed: {first_line(e, typed=True)}") from None
    return dst


# a graph with more weight MatMuls than this is probed per layer type, not per node: each probe
# quantises and runs the whole graph once (at Qwen3-0.6B shape ~60 s per probe, 197 MatMuls)
MAX_NODE_PROBES = 64
# probes of a big graph whose names say nothing of layer types: contiguous blocks of its MatMuls
MAX_BLOCK_PROBES = 8


def layer_type(name: str) -> str:
    """A weight's name with its numbers dropped: layer 7's and layer 8's query projections
    (``model.layers.7.self_attn.q_proj.weight``) share ``model.layers.#.self_attn.q_proj.weight``."""
    return re.sub(r"\d+", "#", name)


def probe_groups(
    nodes: Sequence[str], weights: Mapping[str, str], max_probes: int = MAX_NODE_PROBES,
) -> dict[str, list[str]]:
    """The sets of nodes probed together: one per node when there are at most ``max_probes``,
    else one per layer type (`layer_type` of each node's weight name in ``weights``); if the
    names carry no type (all alike, or as many types as nodes), `MAX_BLOCK_PROBES` contiguous
    blocks."""
    if len(nodes) <= max_probes:
        return {n: [n] for n in nodes}
    groups: dict[str, list[str]] = {}
    for n in nodes:
        groups.setdefault(layer_type(weights.get(n, n)), []).append(n)
    if 1 < len(groups) <= max_probes:
        return groups
    size = -(-len(nodes) // MAX_BLOCK_PROBES)
    return {f"block {i // size} ({nodes[i]}..)": list(nodes[i : i + size]) for i in range(0, len(nodes), size)}


def sensitive_nodes(
    src: str | os.PathLike,
    workdir: str | os.PathLike,
    cosine: Callable[[Path], float],
    budget: float,
    max_probes: int = MAX_NODE_PROBES,
    seconds: float | None = None,
) -> tuple[list[str], dict[str, float], dict[str, object]]:
    """Weight MatMuls whose int8 version *alone* costs more than ``budget`` of cosine.

    Each probe quantises one set of weight MatMuls (`probe_groups`: one node each, or one layer
    type each on a big graph; dynamic int8, no calibration needed) and ``cosine(path)`` measures
    the graph against the reference. Returns (the nodes of every probe over ``budget``, worst
    first; the loss ``1 - cosine`` per probe; how the search was bounded: ``probe`` kind,
    ``probes`` run, ``skipped`` for the time budget ``seconds``, and ``failed`` probes with
    their first line). A probe that fails is recorded and skipped, never raised. Those nodes
    stay fp32 in the mixed-precision int8 candidates: in an untrained or lightly trained ranker
    the first AutoInt layer (small embeddings, then a LayerNorm that rescales its noise) alone
    costs ~10x the whole int8 cosine budget, while the other 30-odd MatMuls cost almost nothing.
    """
    workdir = Path(workdir)
    path, names = named_graph(src)
    weights = {n.name: n.input[1] for n in load_graph(path).graph.node if n.name in set(names)}
    groups = probe_groups(names, weights, max_probes)
    losses: dict[str, float] = {}
    failed: dict[str, str] = {}
    skipped: list[str] = []
    t0 = time.perf_counter()
    for i, (key, members) in enumerate(groups.items()):
        if seconds is not None and time.perf_counter() - t0 > seconds:
            skipped.append(key)
            continue
        try:
            probe = quantize_int8_dynamic(src, workdir / f"probe_{i}.onnx", only=members)
            losses[key] = float(1.0 - cosine(probe))
        except Exception as e:  # noqa: BLE001 - one failed probe is a gap in the map, not a failed export
            failed[key] = first_line(e, typed=True)
        for p in workdir.glob(f"probe_{i}.onnx*"):
            p.unlink()
    over = sorted((k for k, loss in losses.items() if loss > budget), key=lambda k: -losses[k])
    info: dict[str, object] = {
        "probe": "per node" if len(groups) == len(names) else "per layer type or block",
        "probes": len(losses), "weight_matmuls": len(names), "skipped_for_time": skipped, "failed": failed,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return [n for k in over for n in groups[k]], losses, info
