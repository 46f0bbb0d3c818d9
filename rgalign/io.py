"""Atomic file and folder writes, so an interrupted run never leaves a half artifact that looks
whole, and a failed step never replaces a good artifact."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, fsync, then rename over ``path``: a
    reader sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """UTF-8 text, written atomically (`write_bytes_atomic`)."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """JSON with sorted keys and a trailing newline, written atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _json_default(o: Any) -> Any:
    # numpy scalars and paths turn up in metrics and manifests
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# A temporary folder of a process that was killed (SIGKILL, OOM, power) is never removed by it.
# Ours are named ``.NAME.<pid>.<random>.tmp``; one whose pid is gone is removed by the next
# atomic_dir of the same NAME. A folder without a pid (written by an older rgalign) is removed
# once it is older than this: no build of a folder takes an hour between two writes into it.
STALE_UNTAGGED_S = 3600.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def clean_stale_tmp(final: str | os.PathLike) -> list[Path]:
    """Remove ``.NAME.*.tmp`` folders beside ``final`` left by killed writers; returns them."""
    import time

    final = Path(final)
    removed = []
    for tmp in final.parent.glob(f".{final.name}.*.tmp"):
        middle = tmp.name[len(final.name) + 2 : -len(".tmp")]
        pid_text = middle.split(".", 1)[0]
        if pid_text.isdigit() and "." in middle:
            stale = not _pid_alive(int(pid_text))
        else:
            try:
                stale = time.time() - tmp.stat().st_mtime > STALE_UNTAGGED_S
            except OSError:
                continue
        if stale and tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Build a folder under a temporary name beside ``final``; on success swap it in.

    On an exception the temporary folder is removed and ``final`` (if it existed) is untouched.
    Temporary folders of earlier writers of ``final`` that were killed are removed first.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
