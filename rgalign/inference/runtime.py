"""Running a graph: ONNX Runtime sessions (with a check of the providers they really use) and a
quick latency measure. (The PyTorch reference behind the same interface is
`rgalign.export.reference.TorchRunner`: this layer never imports torch.)

A *runner* is any callable ``feeds -> outputs`` (numpy arrays by input / output name), so a
gate, the in-process pipeline and the benchmarks work the same way on PyTorch, ONNX Runtime and
TensorRT.

A GPU provider that cannot load (no CUDA, a missing cuDNN, no TensorRT) makes ONNX Runtime fall
back to the CPU with at most a warning. Here a session lists the providers it was asked for and
those it got; a requested GPU provider that is missing is an `ExportError`, never a silent CPU run.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rgalign.errors import ExportError


# no torch here: ONNX Runtime sessions, which Triton's python-backend models open, need none,
# and importing it costs seconds per process (tests/unit/test_architecture.py checks it).

Feeds = Mapping[str, np.ndarray]
Runner = Callable[[Feeds], dict[str, np.ndarray]]

CPU = "CPUExecutionProvider"

ProviderSpec = str | tuple[str, dict[str, Any]]


def _provider_name(p: ProviderSpec) -> str:
    return p if isinstance(p, str) else p[0]


def check_providers(session: Any, requested: Sequence[ProviderSpec]) -> list[str]:
    """Raise `ExportError` unless every requested provider is one the session really uses.

    ``session.get_providers()`` lists what ONNX Runtime actually registered; a GPU provider that
    failed to load is absent there (ORT only logs it). Returns the session's providers.
    """
    got = list(session.get_providers())
    missing = [_provider_name(p) for p in requested if _provider_name(p) not in got]
    if missing:
        raise ExportError(
            f"ONNX Runtime did not use {', '.join(missing)} (the session runs on {', '.join(got)}): "
            "a silent fall back to the CPU is refused; check the GPU, CUDA/cuDNN and TensorRT "
            "libraries with `rgalign doctor`, or ask for CPUExecutionProvider"
        )
    return got


def make_session(
    path: str | os.PathLike,
    providers: Sequence[ProviderSpec] | None = None,
    threads: int | None = None,
) -> Any:
    """An `onnxruntime.InferenceSession` on ``path`` using exactly ``providers`` (default: CPU).

    ``threads`` sets ``intra_op_num_threads`` (None: ONNX Runtime's default, one per core);
    intra-op threads never spin-wait.
    Graph optimisation is left at ORT's default (all levels): the saved graph is already fused
    offline where that passed its gate, and ORT adds the layout-specific fusions at load.
    """
    import onnxruntime as ort

    providers = list(providers) if providers else [CPU]
    available = ort.get_available_providers()
    absent = [_provider_name(p) for p in providers if _provider_name(p) not in available]
    if absent:
        raise ExportError(
            f"ONNX Runtime here has no {', '.join(absent)} (available: {', '.join(available)}); "
            "install the gpu extra of rgalign (onnxruntime-gpu) on a GPU machine"
        )
    so = ort.SessionOptions()
    if threads is not None:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    so.log_severity_level = 3  # errors only: provider fall-backs are caught by check_providers
    # No spin-waiting between ops: with a reasoner and a ranker session (and Triton's step models)
    # sharing 2 cores, spinning threads starve each other; measured on this machine, the batch-1
    # int8 pipeline took 11.5-12.7 ms without spinning and 57-127 ms with it.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(os.fspath(path), so, providers=providers)
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types; one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"ONNX Runtime cannot load {os.fspath(path)}: {first}") from None
    check_providers(session, providers)
    return session


class OrtRunner:
    """An ONNX Runtime session as a runner: ``runner(feeds) -> {output name: array}``."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.output_names = [o.name for o in session.get_outputs()]
        self.input_names = [i.name for i in session.get_inputs()]

    @classmethod
    def load(
        cls, path: str | os.PathLike, providers: Sequence[ProviderSpec] | None = None, threads: int | None = None
    ) -> OrtRunner:
        return cls(make_session(path, providers, threads))

    def __call__(self, feeds: Feeds) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, {k: feeds[k] for k in self.input_names})
        return dict(zip(self.output_names, outs))


def median_latency_ms(fn: Callable[[], Any], runs: int = 20, warmup: int = 2, budget_s: float = 0.5) -> float:
    """Median wall time of ``fn()`` in ms over up to ``runs`` calls after ``warmup`` calls.

    A quick figure for the report, not a benchmark (`rgalign bench` is): stops early once
    ``budget_s`` is spent so that a slow model does not stall the export.
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < runs and (time.perf_counter() - start < budget_s or len(times) < 3):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3
