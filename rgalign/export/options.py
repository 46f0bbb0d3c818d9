"""What an export is asked to build: one frozen options object, checked once, read by every step."""

from __future__ import annotations

from dataclasses import dataclass

from rgalign.artifacts.registry import PRECISIONS, parse_precisions
from rgalign.errors import ExportError
from rgalign.export.precision import CALIBRATION_METHODS

DEFAULT_OUT = "export"  # at the repository root; SPEC §9

__all__ = ["DEFAULT_OUT", "PRECISIONS", "ExportOptions", "parse_precisions"]


@dataclass(frozen=True)
class ExportOptions:
    """Options of `rgalign.export.export_run` (see its docstring for each)."""

    precisions: tuple[str, ...] = PRECISIONS
    tensorrt: bool = False
    calibration: str = "minmax"  # static int8 calibration: minmax | percentile | entropy
    exporter: str = "dynamo"  # legacy fallback on failure
    fuse: bool = True
    threads: int | None = None  # ONNX Runtime (and PyTorch reference) threads; None: the default

    def __post_init__(self) -> None:
        object.__setattr__(self, "precisions", parse_precisions(self.precisions))
        if self.calibration not in CALIBRATION_METHODS:
            raise ExportError(
                f"unknown calibration {self.calibration!r}; choose from {', '.join(CALIBRATION_METHODS)}"
            )

    def wants(self, precision: str) -> bool:
        return precision in self.precisions
