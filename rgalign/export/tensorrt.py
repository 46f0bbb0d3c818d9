"""TensorRT engines and GPU ONNX Runtime sessions (optional: needs a CUDA GPU and the ``tensorrt``
package, ``pip install rgalign[gpu]``).

- `build_engine(onnx, plan, profile, precision)`: the TensorRT Python API. The network comes from
  TensorRT's ONNX parser on the *unfused* graph (ORT contrib ops are unknown to TensorRT); fp16
  sets the FP16 builder flag; int8 builds from the static QDQ graph (explicit quantisation:
  TensorRT reads the scales from the Q/DQ nodes, no TensorRT calibrator), with FP16 allowed for
  the layers left in float. One optimisation profile gives min / opt / max shapes for batch and
  sequence, and a timing cache file makes rebuilds fast.
- `TrtRunner(plan)`: runs an engine as a runner (feeds -> outputs), with torch CUDA tensors as
  device buffers (no pycuda dependency).
- `gpu_session(onnx, provider)`: an ONNX Runtime session on TensorrtExecutionProvider or
  CUDAExecutionProvider, checked to really use it (`rgalign.inference.runtime.check_providers`).

Without TensorRT, `require_tensorrt()` raises one clear `ExportError`; `rgalign export
--tensorrt` calls it before doing any work.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rgalign.errors import ExportError
from rgalign.inference.runtime import OrtRunner, make_session

# Profile shapes. Batch: opt 1 (the online path, one request per call), max 64 (Triton's dynamic
# batcher rarely forms bigger batches at this model's latency). Sequence: opt 64 (prompts are
# about 50-70 tokens), max = the reasoner's max_len.
MAX_BATCH = 64
OPT_BATCH = 1
OPT_SEQ = 64
WORKSPACE_BYTES = 2 << 30  # 2 GiB of scratch for tactic selection; plenty for a <100M model


def tensorrt_missing() -> str | None:
    """Why TensorRT engines cannot be built here, or None when they can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (the `tensorrt` Python package)"
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to torch"
    return None


def require_tensorrt() -> Any:
    """The ``tensorrt`` module, or `ExportError` with one line saying what is missing."""
    reason = tensorrt_missing()
    if reason is not None:
        raise ExportError(
            f"--tensorrt needs TensorRT and a CUDA GPU: {reason}. Install the gpu extra of rgalign "
            "(tensorrt, onnxruntime-gpu) on a GPU machine, or export without --tensorrt (ONNX only)"
        )
    import tensorrt

    return tensorrt


@dataclass(frozen=True)
class ShapeProfile:
    """Per input: (min, opt, max) shapes of one TensorRT optimisation profile."""

    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]

    def to_dict(self) -> dict:
        return {k: {"min": list(v[0]), "opt": list(v[1]), "max": list(v[2])} for k, v in self.shapes.items()}


def reasoner_profile(max_len: int, max_batch: int = MAX_BATCH) -> ShapeProfile:
    opt_seq = min(OPT_SEQ, max_len)
    s = ((1, 1), (OPT_BATCH, opt_seq), (max_batch, max_len))
    return ShapeProfile({"input_ids": s, "attention_mask": s})


def ranker_profile(n_cat: int, n_num: int, d_query: int, max_batch: int = MAX_BATCH) -> ShapeProfile:
    def s(width: int) -> tuple:
        return ((1, width), (OPT_BATCH, width), (max_batch, width))

    return ShapeProfile({"cat": s(n_cat), "num": s(n_num), "query": s(d_query)})


def build_engine(
    onnx_path: str | os.PathLike,
    plan_path: str | os.PathLike,
    profile: ShapeProfile,
    precision: str,
    timing_cache: str | os.PathLike | None = None,
) -> Path:
    """Build a serialized TensorRT engine (``.plan``) from an ONNX file.

    ``precision``: "fp16" (FP16 flag) or "int8" (INT8 + FP16 flags on a QDQ graph). The timing
    cache at ``timing_cache`` is read when present and written back after the build.
    """
    trt = require_tensorrt()
    if precision not in ("fp16", "int8"):
        raise ExportError(f"TensorRT engines are built in fp16 or int8, not {precision!r}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    if explicit is not None:  # TensorRT < 10 needs it; 10 is always explicit-batch
        flags |= 1 << int(explicit)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.fspath(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {os.fspath(onnx_path)}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    opt = builder.create_optimization_profile()
    for name, (lo, mid, hi) in profile.shapes.items():
        opt.set_shape(name, lo, mid, hi)
    config.add_optimization_profile(opt)
    cache_path = Path(timing_cache) if timing_cache else None
    cache_bytes = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(
            f"TensorRT failed to build a {precision} engine from {os.fspath(onnx_path)} (see its log above)"
        )
    plan_path = Path(plan_path)
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))
    if cache_path is not None:
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return plan_path


class TrtRunner:
    """A TensorRT engine as a runner: numpy feeds in, numpy outputs out (int outputs as int64)."""

    def __init__(self, plan_path: str | os.PathLike) -> None:
        trt = require_tensorrt()
        import torch

        self._torch = torch
        self._trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(Path(plan_path).read_bytes())
        if self.engine is None:
            raise ExportError(
                f"TensorRT cannot load the engine {os.fspath(plan_path)} (built by another TensorRT version?)"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch, trt = self._torch, self._trt
        keep = []
        for name in self.input_names:
            want = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            t = torch.from_numpy(np.ascontiguousarray(feeds[name], dtype=want)).cuda()
            keep.append(t)
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            np_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            t = torch.empty(shape, dtype=torch.from_numpy(np.zeros(0, np_dtype)).dtype, device="cuda")
            outs[name] = t
            self.context.set_tensor_address(name, t.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise ExportError("TensorRT execution failed")
        stream.synchronize()
        result = {}
        for name, t in outs.items():
            a = t.cpu().numpy()
            result[name] = a.astype(np.int64) if np.issubdtype(a.dtype, np.integer) else a.astype(np.float32)
        return result


def gpu_session(
    onnx_path: str | os.PathLike,
    provider: str,
    profile: ShapeProfile | None = None,
    precision: str = "fp32",
    cache_dir: str | os.PathLike | None = None,
) -> OrtRunner:
    """An ORT session on ``provider`` ("tensorrt" or "cuda"), refused if ORT does not use it.

    TensorRT provider: fp16 / int8 flags by ``precision``, the profile's shapes, engine and timing
    caches in ``cache_dir``. CUDA provider: TF32 off, so fp32 stays within the fp32 gate.
    """
    if provider == "tensorrt":
        opts: dict[str, Any] = {
            "trt_fp16_enable": precision in ("fp16", "int8"),
            "trt_int8_enable": precision == "int8",
        }
        if cache_dir is not None:
            opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=os.fspath(cache_dir),
                        trt_timing_cache_enable=True, trt_timing_cache_path=os.fspath(cache_dir))
        if profile is not None:
            def fmt(i: int) -> str:
                return ",".join(f"{n}:{'x'.join(map(str, s[i]))}" for n, s in profile.shapes.items())

            opts.update(trt_profile_min_shapes=fmt(0), trt_profile_opt_shapes=fmt(1), trt_profile_max_shapes=fmt(2))
        providers: list = [("TensorrtExecutionProvider", opts), ("CUDAExecutionProvider", {"use_tf32": 0})]
    elif provider == "cuda":
        providers = [("CUDAExecutionProvider", {"use_tf32": 0})]
    else:
        raise ExportError(f"unknown GPU provider {provider!r}; use 'tensorrt' or 'cuda'")
    # make_session checks that every requested provider is really in use
    return OrtRunner(make_session(onnx_path, providers))
