"""What a server leaves behind, found and read: processes by group or marker (Linux ``/proc``),
shared-memory regions by prefix (``/dev/shm``), and the part of the server log worth quoting.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path

LOG = logging.getLogger(__name__)

_SHM_DIR = Path("/dev/shm")
# Seconds the python-backend stubs get to exit on their own after the server has gone.
_STUB_GRACE_S = 2.0
# Lines of the server log quoted in errors: enough to show the failing model and its traceback.
LOG_TAIL_LINES = 40


def _proc_entries() -> list[tuple[int, int, str]]:
    """``(pid, process group, cmdline)`` of every visible process (Linux ``/proc``)."""
    entries = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # exited meanwhile, or not ours to read
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) "
        if fields and fields[0] == "Z":  # zombie: gone, its parent has not reaped it yet
            continue
        entries.append((int(entry.name), int(fields[2]), cmdline))
    return entries


def find_processes(pgid: int | None = None, marker: str | None = None) -> list[int]:
    """Live pids in process group ``pgid`` or whose command line contains ``marker`` (our
    python-backend stubs carry the server's shm prefix in their arguments)."""
    return [
        pid
        for pid, group, cmdline in _proc_entries()
        if pid != os.getpid()
        and ((pgid is not None and pgid > 0 and group == pgid) or (marker and marker in cmdline))
    ]


def shm_files(prefix: str) -> list[Path]:
    """The ``/dev/shm`` regions named with ``prefix``."""
    if not prefix or not _SHM_DIR.is_dir():
        return []
    return sorted(_SHM_DIR.glob(f"{prefix}*"))


# Error lines the CPU-only wheel server always prints; they say nothing about a failure.
_NOISE = (
    "CudaDriverHelper has not been initialized",
    "unable to create stream",
    "CUDA driver version is insufficient",
)


def read_log_tail(path: Path | None, start: int = 0, lines: int = LOG_TAIL_LINES) -> str:
    """What to quote from the server log (from byte ``start``, where this run began) when it
    fails: its error lines (``E...``; the failing model and its traceback are there) and then its
    last lines, without the status tables."""
    if path is None:
        return "(no log)"
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(start, f.tell() - 256 * 1024))
            text = f.read().decode(errors="replace")
    except OSError as e:
        return f"(cannot read {path}: {e})"
    all_lines = [line.rstrip() for line in text.splitlines()]
    errors = [
        line for line in all_lines
        if line[:1] == "E" and line[1:5].isdigit() and not any(n in line for n in _NOISE)
    ]  # fmt: skip
    last = [line for line in all_lines if line and line[:1] not in "|+"][-(lines // 2) :]
    parts = []
    if errors:
        parts += ["errors:", *errors[-(lines // 2) :], "last lines:"]
    parts += [line for line in last if line not in errors]
    return "\n".join(parts) or "(empty log)"


def kill_leftovers(pgid: int, marker: str) -> None:
    """After a server has gone: give its python-backend stubs `_STUB_GRACE_S` to exit, then
    SIGKILL what remains of its process group or carries ``marker`` (its shm prefix)."""
    deadline = time.monotonic() + _STUB_GRACE_S
    while time.monotonic() < deadline and find_processes(pgid, marker):
        time.sleep(0.05)
    leftovers = find_processes(pgid, marker)
    if leftovers:
        LOG.warning("killing %d process(es) tritonserver left behind: %s", len(leftovers), leftovers)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def remove_shm(prefix: str) -> None:
    """Remove the ``/dev/shm`` regions named with ``prefix``."""
    for path in shm_files(prefix):
        try:
            path.unlink()
        except OSError as e:  # pragma: no cover - another user's file cannot carry our prefix
            LOG.warning("cannot remove %s: %s", path, e)
