"""The export as a list of named steps, each ending OK, FAIL or SKIPPED with its time and a message
(as Triton Model Navigator records its pipeline). The log goes into ``manifest.json``; a
``progress`` callback sees every step start and end (the CLI draws it with rich).

`Step` is one registered stage of the export (a function of the `ExportContext`); `STEPS` in
`rgalign.export.build` lists them in order. A new stage is a function and one entry there.

Each record carries the process's peak resident memory since the record before it
(`rgalign.export.memory`), and memory freed by a step is handed back before the next starts, so
the log shows which step sets the export's peak.

Arguments are passed explicitly (`StepLog.run(name, fn, *args)`), never filtered out of a
``**kwargs`` bag, so a reader sees where every value comes from.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from rgalign.export import memory
from rgalign.progress import FAIL, OK, SKIPPED, START, Progress, first_line

T = TypeVar("T")

__all__ = ["FAIL", "OK", "SKIPPED", "START", "Progress", "Step", "StepLog", "StepRecord"]


@dataclass(frozen=True)
class Step:
    """A registered export stage: ``run(ctx)`` records its own steps in ``ctx.log``."""

    name: str
    run: Callable[[Any], None]


@dataclass
class StepRecord:
    name: str
    status: str
    seconds: float
    message: str = ""
    # peak RSS (MiB) since the previous record: this step and any unrecorded work before it
    peak_rss_mb: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "seconds": round(self.seconds, 3), "message": self.message,
                "peak_rss_mb": self.peak_rss_mb}


class StepLog:
    def __init__(self, progress: Progress | None = None) -> None:
        self.records: list[StepRecord] = []
        self._progress = progress
        self.peak_rss_mb: float | None = None  # the whole log's: the maximum over its records
        memory.reset_peak()  # the first record's peak is the log's own, not the process's before it

    def _emit(self, rec: StepRecord) -> None:
        rec.peak_rss_mb = memory.peak_rss_mb()
        if rec.peak_rss_mb is not None:
            self.peak_rss_mb = max(self.peak_rss_mb or 0.0, rec.peak_rss_mb)
        memory.release()  # what the step freed goes back before the next one starts
        memory.reset_peak()
        self.records.append(rec)
        if self._progress is not None:
            self._progress(rec.name, rec.status, rec.message)

    def run(self, name: str, fn: Callable[..., T], *args: Any, message: Callable[[T], str] | None = None) -> T:
        """Run ``fn(*args)`` as step ``name``: OK with ``message(result)``, or FAIL with the
        exception's first line (and the exception re-raised)."""
        if self._progress is not None:
            self._progress(name, START, "")
        t0 = time.perf_counter()
        try:
            result = fn(*args)
        except BaseException as e:
            self._emit(StepRecord(name, FAIL, time.perf_counter() - t0, first_line(e)))
            raise
        self._emit(StepRecord(name, OK, time.perf_counter() - t0, message(result) if message else ""))
        return result

    def record(self, name: str, status: str, seconds: float, message: str = "") -> None:
        """A step whose outcome the caller decided (a gate: FAIL without raising yet)."""
        self._emit(StepRecord(name, status, seconds, message))

    def skip(self, name: str, reason: str) -> None:
        self._emit(StepRecord(name, SKIPPED, 0.0, reason))

    def to_list(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.records]
