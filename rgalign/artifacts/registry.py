"""The names every layer shares: precisions, serving backends and layouts, the two exported models
and the ensemble's name. Export builds what `PRECISIONS` lists, deploy serves what it lists, the CLI offers
it: a new precision or backend is one entry here, then its step (export) or writer (serve).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeVar

from rgalign.errors import ConfigError, ExportError


class _Named(Protocol):
    name: str


E = TypeVar("E", bound=_Named)


def _by_name(*entries: E) -> dict[str, E]:
    """A registry: its entries by name, in the order given (the order the CLI lists them)."""
    return {e.name: e for e in entries}


@dataclass(frozen=True)
class Precision:
    """A numeric precision of an exported graph. ``tensorrt``: TensorRT builds an engine of it;
    ``default``: `rgalign export` builds it unless told which."""

    name: str
    tensorrt: bool
    about: str
    default: bool = True


@dataclass(frozen=True)
class Choice:
    """One of the ways `rgalign deploy` offers to do a thing, and what its help says of it: a
    backend (``--backend``: how Triton runs the graphs) or a layout (``--layout``: how the
    pipeline is laid out as Triton models)."""

    name: str
    about: str


PRECISION_REGISTRY: dict[str, Precision] = _by_name(
    Precision("fp32", False, "the exported graph (fused where the fusions pass the fp32 gate)"),
    Precision("fp16", True, "float16 weights and activations, made from the fp32 graph"),
    Precision("int8", True, "the fastest int8 pair (dynamic, static QDQ or weight-only) that passes the int8 gates"),
    # asked for, not default: on an AVX2 CPU int4 buys memory, not speed (issue 15), and an
    # untrained reasoner's int4 error exceeds the differences between prompts
    Precision("int4", False, "weight-only int4 reasoner (MatMulNBits), fp32 ranker; int8's gates", default=False),
)
BACKEND_REGISTRY: dict[str, Choice] = _by_name(
    Choice("python", "ONNX Runtime inside Triton's python backend (works with the embedded server)"),
    Choice("onnxruntime", "Triton's own ONNX Runtime backend (optionally with the TensorRT accelerator)"),
    Choice("tensorrt", "Triton's TensorRT backend on the export's engines"),
)
LAYOUT_REGISTRY: dict[str, Choice] = _by_name(
    Choice("fused", "one python-backend model running the whole in-process Pipeline: one process, no "
           "shared-memory hop per request (python backend only)"),
    Choice("ensemble", "preprocess -> reasoner -> ranker -> postprocess chained by a Triton ensemble "
           "(any backend)"),
)

PRECISIONS: tuple[str, ...] = tuple(PRECISION_REGISTRY)  # canonical order: fp32 first
DEFAULT_PRECISIONS: tuple[str, ...] = tuple(p.name for p in PRECISION_REGISTRY.values() if p.default)
TRT_PRECISIONS: tuple[str, ...] = tuple(p.name for p in PRECISION_REGISTRY.values() if p.tensorrt)
BACKENDS: tuple[str, ...] = tuple(BACKEND_REGISTRY)
LAYOUTS: tuple[str, ...] = tuple(LAYOUT_REGISTRY)
MODELS = ("reasoner", "ranker")  # the two graphs of an export, in pipeline order
ENSEMBLE = "rgalign"  # the Triton ensemble `rgalign deploy` writes and clients ask


def parse_precisions(precisions: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """"fp32,int8" or a sequence -> a tuple in canonical order; `ExportError` on anything else."""
    items = [p.strip() for p in (precisions.split(",") if isinstance(precisions, str) else precisions) if p.strip()]
    unknown = [p for p in items if p not in PRECISIONS]
    if unknown or not items:
        raise ExportError(f"unknown precision(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(PRECISIONS)}")
    return tuple(p for p in PRECISIONS if p in items)


def check_backend(backend: str, precision: str) -> None:
    """`ConfigError` for a backend or precision no registry entry names."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")


def default_layout(backend: str) -> str:
    """``fused`` for the python backend (measured faster there: README "Serving"), ``ensemble``
    where a native backend runs the graphs (the ensemble is what uses it)."""
    return "fused" if backend == "python" else "ensemble"


def check_layout(layout: str, backend: str) -> None:
    """`ConfigError` for a layout no registry entry names, or fused with a native backend."""
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if layout == "fused" and backend != "python":
        raise ConfigError(
            "the fused layout runs ONNX Runtime inside the python backend: use --backend python, "
            "or --layout ensemble for the onnxruntime and tensorrt backends"
        )
