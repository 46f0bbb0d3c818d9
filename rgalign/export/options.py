"""What an export is asked to build: one frozen options object, checked once, read by every step."""

from __future__ import annotations

from dataclasses import dataclass

from rgalign.artifacts.registry import DEFAULT_PRECISIONS, PRECISIONS, parse_precisions
from rgalign.errors import ExportError
from rgalign.export.external import PROTO_LIMIT
from rgalign.export.precision import CALIBRATION_METHODS

# the int8 search's sensitivity probes stop after this long (each probe quantises and runs the
# whole graph: ~1 min at Qwen3-0.6B shape); what was skipped is in the report
INT8_SEARCH_SECONDS = 900.0

DEFAULT_OUT = "export"  # at the repository root; SPEC §9

# int8 candidates the search may try (`rgalign.export.int8`); ``None`` in `ExportOptions` is the
# automatic choice, which skips a candidate that cannot be chosen on the requested backends
INT8_METHODS = ("dynamic", "static", "weight-only")


def parse_int8_methods(value: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...] | None:
    """``"auto"`` / ``None`` / ``""`` -> None (the automatic choice); ``"dynamic,static"`` -> a
    tuple of `INT8_METHODS`; anything else is one `ExportError` line."""
    if value is None:
        return None
    items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    if not items or items == ["auto"]:
        return None
    unknown = [v for v in items if v not in INT8_METHODS]
    if unknown:
        raise ExportError(f"unknown int8 method {', '.join(map(repr, unknown))}; choose from auto or a comma list "
                          f"of {', '.join(INT8_METHODS)}")
    return tuple(dict.fromkeys(items))

__all__ = ["DEFAULT_OUT", "DEFAULT_PRECISIONS", "INT8_METHODS", "PRECISIONS", "ExportOptions", "parse_int8_methods",
           "parse_precisions"]


@dataclass(frozen=True)
class ExportOptions:
    """Options of `rgalign.export.export_run` (see its docstring for each)."""

    precisions: tuple[str, ...] = DEFAULT_PRECISIONS
    tensorrt: bool = False
    calibration: str = "minmax"  # static int8 calibration: minmax | percentile | entropy
    exporter: str = "dynamo"  # legacy fallback on failure
    fuse: bool = True
    threads: int | None = None  # ONNX Runtime (and PyTorch reference) threads; None: the default
    # a graph whose weights pass this many bytes is written with ONNX external data (protobuf
    # holds at most 2 GiB); tests set it low to send a tiny model down the same path
    external_data_threshold: int = PROTO_LIMIT
    int8_search_seconds: float = INT8_SEARCH_SECONDS
    # the int8 search's candidate methods for both models (weight-only: the reasoner's only);
    # None: automatic (`rgalign.export.int8.int8_plan` says what it skips and why)
    int8_methods: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "precisions", parse_precisions(self.precisions))
        object.__setattr__(self, "int8_methods", parse_int8_methods(self.int8_methods))
        if self.int8_methods == ("weight-only",):
            raise ExportError("int8 methods 'weight-only' leave the ranker without an int8 candidate (weight-only is "
                              "for the reasoner's LLM weights): add dynamic or static")
        if self.external_data_threshold < 0:
            raise ExportError(f"external data threshold must be >= 0 bytes, got {self.external_data_threshold}")
        if self.calibration not in CALIBRATION_METHODS:
            raise ExportError(
                f"unknown calibration {self.calibration!r}; choose from {', '.join(CALIBRATION_METHODS)}"
            )

    def wants(self, precision: str) -> bool:
        return precision in self.precisions

    @property
    def end_to_end(self) -> bool:
        """Whether a requested precision is gated on held-out requests (needs the PyTorch
        pipeline's pass over them): int8 and int4."""
        return self.wants("int8") or self.wants("int4")
