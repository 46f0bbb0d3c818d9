"""Triton's response cache: the server flags that turn it on and its counters from ``/metrics``.

Both layouts of ``rgalign deploy`` enable the response cache on the ``rgalign`` model (the
ensemble's top level, or the fused model): its answer depends on the request alone (``features``
and ``top_k``), and in a chat the same user reopens the conversation with the same context.
Triton keys an entry by a hash of the request's inputs; only successful answers are stored.
The cache itself belongs to the server: ``rgalign serve --cache-mb N`` starts it with Triton's
``local`` cache of N MiB (`server_args`); without it the models serve uncached.

The local cache ships in the nvidia-pytriton wheel as ``tritonserver/caches/local/
libtritoncache_local.so``; Triton looks for ``<cache-directory>/local/``, whose default
(``/opt/tritonserver/caches``) exists only in NGC containers, so the wheel's folder is passed.

Measured here (tiny export, python backend): a lookup that hits takes ~4 µs inside Triton
(``nv_cache_hit_duration_per_model`` / hits), where a miss goes on to run the whole pipeline.
"""

from __future__ import annotations

import re
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rgalign.errors import ConfigError

# One entry is ~100 bytes of request hash plus the answer (k intent ids and k floats): 64 MiB
# holds hundreds of thousands of answers. The CLI's default is 0 (off): caching is a choice.
MIB = 1 << 20


def cache_directory(tritonserver: Path | None = None) -> Path:
    """The folder holding ``local/libtritoncache_local.so``: beside the given server binary
    (``<root>/bin/tritonserver`` -> ``<root>/caches``) when it has one, else the wheel's."""
    if tritonserver is not None:
        beside = Path(tritonserver).resolve().parent.parent / "caches"
        if (beside / "local").is_dir():
            return beside
    from rgalign.serve.server.binary import wheel_dirs

    return wheel_dirs()[0] / "caches"


def server_args(cache_mb: int, tritonserver: Path | None = None) -> list[str]:
    """The tritonserver flags for a local response cache of ``cache_mb`` MiB (none for 0)."""
    if cache_mb < 0:
        raise ConfigError(f"--cache-mb must be >= 0, got {cache_mb}")
    if cache_mb == 0:
        return []
    directory = cache_directory(tritonserver)
    if not (directory / "local" / "libtritoncache_local.so").is_file():
        raise ConfigError(
            f"Triton's local response cache is not in {directory}/local/; serve without --cache-mb, "
            "or use a server that ships caches/local/libtritoncache_local.so"
        )
    return ["--cache-directory", str(directory), f"--cache-config=local,size={cache_mb * MIB}"]


@dataclass(frozen=True)
class CacheStats:
    """The response-cache counters of one model (``nv_cache_*_per_model``): lookups that hit and
    missed, and the microseconds spent on each kind."""

    hits: int = 0
    misses: int = 0
    hit_us: int = 0
    miss_us: int = 0

    @property
    def hit_rate(self) -> float | None:
        total = self.hits + self.misses
        return self.hits / total if total else None

    def __sub__(self, other: CacheStats) -> CacheStats:
        return CacheStats(*(a - b for a, b in zip(asdict(self).values(), asdict(other).values())))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hit_rate": self.hit_rate}


_COUNTERS = {
    "nv_cache_num_hits_per_model": "hits",
    "nv_cache_num_misses_per_model": "misses",
    "nv_cache_hit_duration_per_model": "hit_us",
    "nv_cache_miss_duration_per_model": "miss_us",
}
_LINE = re.compile(r'^(\w+)\{([^}]*)\}\s+([0-9.eE+-]+)$')


def parse_metrics(text: str, model: str = "rgalign") -> CacheStats:
    """The cache counters of ``model`` from Triton's Prometheus text (zeros when absent: no cache
    on the server, or the model has none)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if not m or m.group(1) not in _COUNTERS:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        if labels.get("model") == model:
            key = _COUNTERS[m.group(1)]
            values[key] = values.get(key, 0) + int(float(m.group(3)))
    return CacheStats(**values)


def read_stats(metrics_url: str, model: str = "rgalign", timeout: float = 5.0) -> CacheStats:
    """`parse_metrics` of a running server's metrics endpoint (``http://host:port/metrics``)."""
    with urllib.request.urlopen(metrics_url, timeout=timeout) as response:
        return parse_metrics(response.read().decode("utf-8", errors="replace"), model)
