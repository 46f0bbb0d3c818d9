"""The FLOP floor: how fast a model *could* run here if every matmul ran at this machine's peak.

    floor_ms = weight-matmul FLOPs / peak(precision) + attention-matmul FLOPs / peak(fp32)

FLOPs are matmul FLOPs only (2 per multiply-add): norms, softmax, RoPE and the gather are left
out, so the floor is a lower bound and ``measured / floor`` (SPEC §8: within 3x for the int8
reasoner) says how much of the run is *not* matmul at peak. Attention's two matmuls
(Q K^T and A V) multiply activations by activations: int8 quantisation leaves them in fp32, so
they are charged at the fp32 peak even in the int8 floor.

The peak is measured in the same run (`measure_peaks`): a GEMM at the reasoner's own shape
(batch x tokens rows, hidden x intermediate) and a large square one, fp32 with PyTorch and with
ONNX Runtime, int8 with an ONNX Runtime ``MatMulInteger`` graph (uint8 activations x int8 weights,
what ORT's dynamic int8 kernels run) built with ``onnx.helper``. The best of them is the peak.

Example (the default reasoner: 4 layers, hidden 256, 4 heads of 64, 2 KV heads, MLP 512, d 64)::

    >>> s = DecoderShape(layers=4, hidden=256, intermediate=512, heads=4, kv_heads=2, head_dim=64, d_out=64)
    >>> decoder_flops(s, batch=1, seq=64)["total"]
    318799872
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from rgalign.bench.timing import Budget, time_calls


@dataclass(frozen=True)
class DecoderShape:
    """The matmul shapes of a decoder-only transformer with a projection head on one pooled token
    (`rgalign.models.reasoner.Reasoner`: backbone + ``proj``; no LM head on the serving path)."""

    layers: int
    hidden: int
    intermediate: int  # SwiGLU: three H x I matrices (gate, up, down)
    heads: int
    kv_heads: int
    head_dim: int
    d_out: int  # the projection head (the latent query size)

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any], d_out: int) -> DecoderShape:
        """From a Hugging Face ``config.json`` (Qwen3 / Llama names)."""
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        return cls(
            layers=int(cfg["num_hidden_layers"]),
            hidden=hidden,
            intermediate=int(cfg["intermediate_size"]),
            heads=heads,
            kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            d_out=int(d_out),
        )

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def decoder_flops(s: DecoderShape, batch: int, seq: int) -> dict[str, int]:
    """Matmul FLOPs of one forward pass over ``batch`` prompts of ``seq`` tokens.

    Returns ``weights`` (projections, MLP, head: activation x weight), ``attention``
    (Q K^T and A V: activation x activation), and ``total``.
    """
    tokens = batch * seq
    q_width, kv_width = s.heads * s.head_dim, s.kv_heads * s.head_dim
    per_layer_weights = 2 * tokens * (
        s.hidden * q_width  # q
        + 2 * s.hidden * kv_width  # k, v
        + q_width * s.hidden  # o
        + 3 * s.hidden * s.intermediate  # gate, up, down
    )
    # every head scores all seq x seq pairs (the causal mask zeroes half, the kernels still run it)
    per_layer_attention = 2 * 2 * batch * s.heads * seq * seq * s.head_dim
    head = 2 * batch * s.hidden * s.d_out  # one pooled token per prompt
    weights = s.layers * per_layer_weights + head
    attention = s.layers * per_layer_attention
    return {"weights": weights, "attention": attention, "total": weights + attention}


def torch_flops(module: Any, *inputs: Any) -> int:
    """Matmul FLOPs of ``module(*inputs)`` counted by PyTorch's ``FlopCounterMode`` (mm, bmm,
    addmm, scaled-dot-product attention): a check on `decoder_flops`, and the count for models
    without an analytic formula (the ranker)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return int(counter.get_total_flops())


# ---- the machine's matmul peak -------------------------------------------------------------------


def _matmul_graph(m: int, k: int, n: int, int8: bool, seed: int = 0) -> bytes:
    """An ONNX graph ``y = a @ W`` with W a (k, n) initializer: fp32 MatMul, or int8
    MatMulInteger (a uint8, W int8 -> int32)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    if int8:
        w = rng.integers(-127, 128, size=(k, n), dtype=np.int8)
        node = helper.make_node("MatMulInteger", ["a", "w"], ["y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
    else:
        w = rng.standard_normal((k, n)).astype(np.float32)
        node = helper.make_node("MatMul", ["a", "w"], ["y"])
        a_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph(
        [node], "gemm",
        [helper.make_tensor_value_info("a", a_type, [m, k])],
        [helper.make_tensor_value_info("y", y_type, [m, n])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every ONNX Runtime this project supports
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _ort_gemm(m: int, k: int, n: int, int8: bool, threads: int | None, budget: Budget) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads is not None:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(_matmul_graph(m, k, n, int8), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, size=(m, k), dtype=np.uint8) if int8 else rng.standard_normal((m, k)).astype(np.float32)
    return time_calls(lambda: sess.run(None, {"a": a}), 1, budget).p50_ms


def _torch_gemm(m: int, k: int, n: int, threads: int | None, budget: Budget) -> float:
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        g = torch.Generator().manual_seed(0)
        a, w = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
        with torch.inference_mode():
            return time_calls(lambda: torch.mm(a, w), 1, budget).p50_ms
    finally:
        torch.set_num_threads(before)


def measure_peaks(
    shapes: dict[str, tuple[int, int, int]], threads: int | None, budget: Budget
) -> dict[str, Any]:
    """Time GEMMs of each (M, K, N) in ``shapes`` (name -> shape) with every implementation.

    Returns ``{"gemms": [{name, shape, impl, precision, p50_ms, gflops}...], "peak_gflops":
    {"fp32": best, "int8": best}, "errors": [...]}``; an implementation that fails is listed in
    errors, never fatal (int8 is ``None`` when ORT cannot run ``MatMulInteger``).
    """
    gemms: list[dict[str, Any]] = []
    errors: list[str] = []
    impls = (
        ("pytorch", "fp32", lambda m, k, n: _torch_gemm(m, k, n, threads, budget)),
        ("onnxruntime", "fp32", lambda m, k, n: _ort_gemm(m, k, n, False, threads, budget)),
        ("onnxruntime", "int8", lambda m, k, n: _ort_gemm(m, k, n, True, threads, budget)),
    )
    for name, (m, k, n) in shapes.items():
        for impl, precision, fn in impls:
            try:
                ms = fn(m, k, n)
            except Exception as e:  # noqa: BLE001 - a missing kernel is a recorded fact, not a crash
                errors.append(f"{impl} {precision} {m}x{k}x{n}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                continue
            gemms.append({"name": name, "shape": [m, k, n], "impl": impl, "precision": precision,
                          "p50_ms": round(ms, 4), "gflops": round(2 * m * k * n / (ms * 1e-3) / 1e9, 2)})
    peak: dict[str, float | None] = {}
    for precision in ("fp32", "int8"):
        vals = [g["gflops"] for g in gemms if g["precision"] == precision]
        peak[precision] = max(vals) if vals else None
    return {"gemms": gemms, "peak_gflops": peak, "errors": errors, "threads": threads}


def floor_ms(flops: dict[str, int], precision: str, peak_gflops: dict[str, float | None]) -> float | None:
    """The floor of one forward pass (module docstring): weights at ``precision``'s peak,
    attention at the fp32 peak. ``flops`` holds ``weights`` and ``attention`` (or only ``total``,
    all charged at ``precision``'s peak). None when a needed peak was not measured."""
    p = peak_gflops.get("int8" if precision == "int8" else "fp32")
    p32 = peak_gflops.get("fp32")
    if not p or not p32:
        return None
    if "weights" in flops:
        seconds = flops["weights"] / (p * 1e9) + flops.get("attention", 0) / (p32 * 1e9)
    else:
        seconds = flops["total"] / (p * 1e9)
    return seconds * 1e3


def default_threads() -> int:
    """Every usable core: what ONNX Runtime uses by default, made explicit for every engine."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
