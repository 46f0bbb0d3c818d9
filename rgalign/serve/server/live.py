"""Deploying onto a repository that a server is serving: refuse unless forced, then reload.

Without this, ``rgalign deploy`` onto a served repository swapped the folder under the running
server: the live log was deleted with the old folder and what was on disk no longer matched what
was served (issue 16). Now:

- `servers_of(repo)`: the ``tritonserver`` processes whose ``--model-repository`` is ``repo``
  (read from ``/proc``; any server, started by ``rgalign serve`` or not), and the
  ``REPO/.rgalign-serve.<pid>.json`` that each ``rgalign serve`` of it keeps;
- `deploy` refuses (`ServeError`) when a server is found, unless ``force``;
- with ``force``, the serve's files (log, admin key, state) are carried into the new folder
  (`RUNTIME_FILES`: the open log keeps its inode), and `request_reload` sends SIGHUP to the
  supervising ``rgalign serve``, which unloads and loads every model from the new folder and
  records it; deploy waits (bounded) until it has, so served == on disk when deploy returns.
  A server without a supervising ``rgalign serve`` cannot be reloaded from here: deploy says so.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rgalign.errors import ServeError
from rgalign.io import read_json
from rgalign.serve.server.admin import KEY_FILE
from rgalign.serve.server.procs import _proc_entries

STATE_PATTERN = ".rgalign-serve.*.json"
# Files of a running serve that live in the repository root and must survive a forced deploy.
RUNTIME_FILES = ("tritonserver.log", KEY_FILE, STATE_PATTERN)


def state_file(repo: Path, pid: int | None = None) -> Path:
    """Where the ``rgalign serve`` of pid ``pid`` (this process by default) records itself."""
    return Path(repo) / STATE_PATTERN.replace("*", str(pid if pid is not None else os.getpid()))


@dataclass(frozen=True)
class LiveServer:
    """A tritonserver serving a repository, and the ``rgalign serve`` supervising it (if any)."""

    server_pid: int
    serve_pid: int | None
    http_url: str | None

    def describe(self) -> str:
        who = f"tritonserver pid {self.server_pid}"
        if self.serve_pid:
            who += f" under `rgalign serve` pid {self.serve_pid}"
        return who + (f" at {self.http_url}" if self.http_url else "")


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_states(repo: Path) -> dict[int, dict[str, Any]]:
    """The live ``rgalign serve`` records of ``repo``, by their tritonserver's pid."""
    states = {}
    for path in Path(repo).glob(STATE_PATTERN):
        try:
            state = read_json(path)
        except (OSError, ValueError):
            continue
        if _alive(state.get("pid")) and state.get("server_pid"):
            states[int(state["server_pid"])] = state
    return states


def servers_of(repo: str | os.PathLike) -> list[LiveServer]:
    """Running tritonservers whose model repository is ``repo``."""
    target = Path(repo).resolve()
    states = read_states(target)
    found = []
    for pid, _group, cmdline in _proc_entries():
        args = cmdline.split(" ")
        if not args or not args[0].endswith("tritonserver"):
            continue
        for i, arg in enumerate(args[:-1]):
            value = args[i + 1] if arg == "--model-repository" else None
            if arg.startswith("--model-repository="):
                value = arg.split("=", 1)[1]
            if value and Path(value).resolve() == target:
                state = states.get(pid, {})
                found.append(LiveServer(pid, state.get("pid"), state.get("http_url")))
                break
    return found


def refuse_unless_forced(repo: str | os.PathLike, force: bool) -> list[LiveServer]:
    """ServeError when ``repo`` is being served and not ``force``; returns the live servers."""
    live = servers_of(repo)
    if live and not force:
        raise ServeError(
            f"{os.fspath(repo)} is being served ({live[0].describe()}); deploying onto it would swap "
            "the models under the running server: deploy to another folder, stop the server, or pass "
            "--force to replace it and reload the server from the new files"
        )
    return live


def carry_runtime_files(old: Path, new: Path) -> None:
    """Move the running serve's files from the old repository folder into the new one."""
    for pattern in RUNTIME_FILES:
        for src in old.glob(pattern):
            if src.is_file() and not (new / src.name).exists():
                os.replace(src, new / src.name)


def request_reload(repo: str | os.PathLike, live: list[LiveServer], timeout: float = 120.0) -> str:
    """SIGHUP the supervising ``rgalign serve`` of each live server and wait until it has
    reloaded every model from ``repo`` (its state file records the deployment it loaded).
    Returns a one-line summary; ServeError when a server cannot be reloaded."""
    repo = Path(repo)
    deploy_json = repo / "deploy.json"
    want = deploy_json.stat().st_mtime_ns if deploy_json.is_file() else None
    notes = []
    for server in live:
        if not server.serve_pid:
            raise ServeError(
                f"{server.describe()} was not started by `rgalign serve`, so it cannot be told to reload; "
                "restart it to serve the new models"
            )
        os.kill(server.serve_pid, signal.SIGHUP)
        t0 = time.monotonic()
        while True:
            state = read_states(repo).get(server.server_pid, {})
            if want is not None and state.get("deploy_mtime_ns") == want:
                break
            if not _alive(server.serve_pid):
                raise ServeError(f"`rgalign serve` pid {server.serve_pid} exited while reloading; see its log")
            if time.monotonic() - t0 > timeout:
                raise ServeError(
                    f"{server.describe()} did not reload within {timeout:.0f} s; see {repo / 'tritonserver.log'}"
                )
            with contextlib.suppress(Exception):
                time.sleep(0.1)
        notes.append(f"reloaded {server.describe()} in {time.monotonic() - t0:.1f} s")
    return "; ".join(notes)
