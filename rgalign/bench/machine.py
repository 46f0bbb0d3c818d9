"""What a benchmark ran on: CPU model and cores, memory, GPU, library versions, threads.

A figure without its machine is not a result: `describe_machine` goes into every ``bench.json``.
Read from ``/proc`` (Linux) with `platform` fallbacks; nothing here needs psutil.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

PACKAGES = ("rgalign", "numpy", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript",
            "transformers", "tritonclient", "nvidia-pytriton", "tensorrt")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    """The SIMD flags that decide matmul speed (AVX2, AVX-512 VNNI for int8, AMX)."""
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8", "amx_bf16")
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [w for w in wanted if w in have]
    except OSError:
        pass
    return []


def _mem_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def package_versions() -> dict[str, str]:
    from rgalign.artifacts.run import package_versions as versions

    return versions(PACKAGES)


def gpu_info() -> dict[str, Any]:
    """``{"available": bool, "name", "count", "cuda"}`` from torch, or the reason there is none."""
    try:
        import torch
    except ImportError:
        return {"available": False, "reason": "torch is not installed"}
    if not torch.cuda.is_available():
        return {"available": False, "reason": f"torch {torch.__version__} sees no CUDA GPU"}
    return {
        "available": True,
        "count": torch.cuda.device_count(),
        "name": torch.cuda.get_device_name(0),
        "cuda": torch.version.cuda,
    }


def describe_machine(threads: int | None = None) -> dict[str, Any]:
    """The machine and software a benchmark ran on; ``threads`` is what the benchmark used."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": affinity,
        "memory_gib": _mem_gib(),
        "load_average": _load(),  # 1, 5, 15 min: a loaded machine makes every figure noisier
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "gpu": gpu_info(),
        "versions": package_versions(),
        "threads": threads,
    }
