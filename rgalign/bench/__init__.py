"""Benchmarks (SPEC §7) and the installation doctor.

    runner.py     run_bench: the whole of `rgalign bench`, one call
    target.py     what is measured: an EXPORT, a RUN, or a server alone
    inputs.py     real requests; model inputs of exact shapes
    timing.py     warm-up, adaptive repetitions, p50 / p95 / p99, throughput
    inprocess.py  PyTorch eager / compile, ONNX Runtime per precision and provider, TensorRT
    served.py     the Triton ensemble over HTTP and gRPC (async clients), perf_analyzer
    flops.py      FLOP counts, the machine's matmul peak, the FLOP floor
    ratios.py     ratios of the same run and the SPEC §8 targets
    report.py     bench.json -> bench.md, bench.png
    machine.py    the machine a result was measured on
    doctor.py     `rgalign doctor`: which paths work here
"""

from rgalign.bench.runner import run_bench

__all__ = ["run_bench"]
