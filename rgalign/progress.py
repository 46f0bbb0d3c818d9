"""The progress vocabulary every long library call shares (export, deploy, bench, quickstart):
``progress(step, status, message)``, status one of START, OK, FAIL, SKIPPED, and the one-line
form of an error that messages quote. The CLI draws it; the library never prints."""

from __future__ import annotations

from collections.abc import Callable

OK, FAIL, SKIPPED, START = "OK", "FAIL", "SKIPPED", "START"

# progress(step name, status, message): status is START when a step begins
Progress = Callable[[str, str, str], None]
# log(line): where a long command's human-readable lines go (print by default)
Log = Callable[[str], None]


def first_line(e: BaseException, typed: bool = False, limit: int | None = None) -> str:
    """An exception as one line: its message's first line (cut at ``limit`` characters, with
    ``typed`` prefixed by the exception's type), else its type's name."""
    text = str(e).strip()
    if not text:
        return type(e).__name__
    line = text.splitlines()[0][:limit]
    return f"{type(e).__name__}: {line}" if typed else line


def step_announcer(progress: Progress | None) -> Callable[[str], None]:
    """``say(step)``: tells ``progress`` that ``step`` starts (a no-op without one)."""
    if progress is None:
        return lambda _step: None
    return lambda step: progress(step, START, "")
