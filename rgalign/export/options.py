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

__all__ = ["DEFAULT_OUT", "DEFAULT_PRECISIONS", "PRECISIONS", "ExportOptions", "parse_precisions"]


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

    def __post_init__(self) -> None:
        object.__setattr__(self, "precisions", parse_precisions(self.precisions))
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
