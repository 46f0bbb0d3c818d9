"""Peak resident memory per export step, and giving memory back between steps (Linux).

At Qwen3-0.6B shape an export holds gigabytes at a time (the PyTorch reasoner is 2.4 GB in fp32,
an ONNX Runtime session of it as much again with its pre-packed weights, a quantiser's copy of
the graph), so the step log records each step's peak, and the steps' scratch memory is handed
back before the next one starts:

- `peak_rss_mb()`: the process's resident high-water mark (``VmHWM`` in ``/proc/self/status``);
- `reset_peak()`: resets that mark to the current RSS (``5`` into ``/proc/self/clear_refs``,
  Linux 4.0+), so the next reading is the peak *since the reset*: one figure per step;
- `release()`: a full garbage collection (ONNX Runtime sessions and numpy arrays caught in
  reference cycles) and glibc's ``malloc_trim(0)``, which returns freed heap pages to the system:
  weights of 1-32 MB (a 0.6B model's projections) are heap, not mmap, allocations once glibc's
  adaptive mmap threshold has risen, and without the trim they stay resident after their graph
  is gone.

Caveat: resetting the mark also resets what the kernel reports to a parent at exit, so
``/usr/bin/time -v``'s "Maximum resident set size" for an export shows only the last step's
peak; the export's own figure is the maximum over its steps (``peak_rss_mb`` in the manifest).
Elsewhere (no ``/proc``) every function is a no-op returning None / False.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from functools import lru_cache

__all__ = ["peak_rss_mb", "release", "reset_peak"]


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_rss_mb() -> float | None:
    """The resident high-water mark in MiB since the process started or the last `reset_peak`."""
    kb = _status_kb("VmHWM")
    return None if kb is None else round(kb / 1024, 1)


def rss_mb() -> float | None:
    """The current resident set in MiB."""
    kb = _status_kb("VmRSS")
    return None if kb is None else round(kb / 1024, 1)


def reset_peak() -> bool:
    """Start a new high-water mark at the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


@lru_cache(maxsize=1)
def _malloc_trim():  # noqa: ANN202 - a ctypes function or None
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release() -> None:
    """Collect garbage and hand freed heap pages back to the system."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
