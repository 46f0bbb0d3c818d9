"""`rgalign serve`'s supervision of a running Triton: truthful health, recovery without a person,
live reload, graceful drain.

What Triton does by itself, measured with the nvidia-pytriton server (issue 16): when a
python-backend stub dies (``kill -9``, OOM killer) Triton never restarts it; every request to
that model fails ("Stub process 'reasoner_0_0' is not healthy") while ``/v2/health/ready`` and the
model's ready endpoint stay 200. So the server runs with ``--model-control-mode explicit`` and
this supervisor, every ``poll_s``:

1. checks the tritonserver process; if it died, restarts it (at most ``max_server_restarts`` in
   ``restart_window_s``, then gives up with the log's tail);
2. counts each model's stub processes in ``/proc`` (their command line holds
   ``REPO/<model>/1/model.py`` and the server's shm prefix); a model with fewer stubs than at
   start is *dead*: it is unloaded at once, which makes ``/v2/health/ready`` (strict readiness)
   and the model's ready endpoint answer 503 while it cannot serve, then loaded again (a plain
   load of an unchanged model is a no-op and does not recover it); requests succeed again once
   the load returns. Two failed reloads of a model: the server is restarted.

``reload()`` (SIGHUP, sent by ``rgalign deploy --force``) unloads and loads every model, so that
what is served is what is on disk; ``drain()`` (SIGTERM, SIGINT) unloads the ensemble, which
lets in-flight requests finish while every new request gets 404 at once, waits for that
(bounded by ``drain_timeout_s``), then the server is stopped.

Events (a stub died, a model recovered, the server restarted, a drain) go to the log and to an
``on_event`` callback with their timings; the state file tells other commands
(``deploy``) that the repository is being served, by whom, and which deployment is loaded
(``REPO/.rgalign-serve.<pid>.json``, one per serve).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rgalign.errors import ServeError
from rgalign.io import write_json_atomic
from rgalign.serve.server.admin import AdminClient
from rgalign.serve.server.live import state_file
from rgalign.serve.server.lifecycle import TritonServer
from rgalign.serve.server.procs import _proc_entries, read_log_tail

LOG = logging.getLogger(__name__)

ENSEMBLE = "rgalign"
# Load order: the ensemble last (it needs its steps).
MODELS = ("preprocess", "reasoner", "ranker", "postprocess", ENSEMBLE)


@dataclass(frozen=True)
class SupervisorOptions:
    """How the supervisor watches. Defaults and their reasons:

    - ``poll_s=0.2``: a dead stub is seen within 0.2 s; one ``/proc`` scan costs a few ms of
      one core, ~2% at this rate.
    - ``load_timeout_s=60``: a model load is an ONNX Runtime session plus its warm-up (0.3-2 s
      for the shipped sizes); a paper-size reasoner takes longer.
    - ``drain_timeout_s=10``: in-flight requests take milliseconds; 10 s also covers a queue of
      large batches, and stays under a container runtime's default 30 s stop grace.
    - ``max_server_restarts=3`` in ``restart_window_s=300``: a server that keeps dying is
      broken (a bad model, no memory); restarting it forever would hide that.
    """

    poll_s: float = 0.2
    load_timeout_s: float = 60.0
    drain_timeout_s: float = 10.0
    max_server_restarts: int = 3
    restart_window_s: float = 300.0


@dataclass
class Event:
    """Something the supervisor saw or did: ``kind`` in stub-died, recovered, recover-failed,
    server-died, server-restarted, reloaded, drained; ``seconds`` how long it took."""

    kind: str
    model: str = ""
    seconds: float = 0.0
    detail: str = ""
    at: float = field(default_factory=time.time)

    def __str__(self) -> str:
        what = f"{self.kind} {self.model}".strip()
        took = f" in {self.seconds:.2f} s" if self.seconds else ""
        return f"{what}{took}{': ' + self.detail if self.detail else ''}"


def stub_pids(shm_prefix: str, model: str) -> list[int]:
    """Pids of ``model``'s live python-backend stubs of the server with ``shm_prefix``."""
    return [
        pid
        for pid, _group, cmdline in _proc_entries()
        if shm_prefix in cmdline and "triton_python_backend_stub" in cmdline and f"/{model}/1/model.py" in cmdline
    ]


def serving_stub_pid(shm_prefix: str, model: str, expected: int, timeout: float = 15.0) -> int:
    """The pid of one of ``model``'s serving stubs. After a reload the previous stubs linger a
    moment beside the new ones (killing such a leftover harms nothing), so this waits until
    exactly ``expected`` (the configured instance count) are alive."""
    deadline = time.monotonic() + timeout
    while len(pids := stub_pids(shm_prefix, model)) != expected:
        if time.monotonic() > deadline:
            raise ServeError(f"{model}: {len(pids)} live stubs after {timeout:.0f} s, expected {expected}")
        time.sleep(0.05)
    return pids[0]


def stub_counts(shm_prefix: str) -> Counter[str]:
    """Live python-backend stubs of the server whose shm prefix is ``shm_prefix``, per model."""
    counts: Counter[str] = Counter()
    for _pid, _group, cmdline in _proc_entries():
        if shm_prefix not in cmdline or "triton_python_backend_stub" not in cmdline:
            continue
        args = cmdline.split(" ")
        if len(args) > 1 and args[1].endswith("model.py"):
            counts[Path(args[1]).parent.parent.name] += 1
    return counts


def configured_stubs(repo: Path) -> Counter[str]:
    """Python-backend models of ``repo`` and their configured instance count (stubs to expect)."""
    from rgalign.serve.repository.config import read_config

    counts: Counter[str] = Counter()
    for config_path in sorted(Path(repo).glob("*/config.pbtxt")):
        try:
            config = read_config(config_path)
        except Exception:  # noqa: BLE001 - a model we cannot read is one we do not supervise
            continue
        if config.backend != "python":
            continue
        counts[config_path.parent.name] = sum(g.count or 1 for g in config.instance_group) or 1
    return counts


class Supervisor:
    """Watches ``server`` (started, ``model_control="explicit"``, restricted APIs opened by
    ``key``) and repairs it; `run` until stopped. Thread-safe entry points: `request_reload`,
    `stop`."""

    def __init__(
        self,
        server: TritonServer,
        key: str | None,
        options: SupervisorOptions | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        if server.model_control != "explicit":
            raise ServeError("supervision needs model_control='explicit' (it unloads and loads models)")
        self.server = server
        self.key = key
        self.options = options or SupervisorOptions()
        self.on_event = on_event
        self.events: list[Event] = []
        self.expected: Counter[str] = Counter()
        self._restarts: deque[float] = deque()
        self._failed_reloads: Counter[str] = Counter()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self.stop_signal = 0

    @property
    def admin(self) -> AdminClient:
        return AdminClient(self.server.http_url, self.key, timeout=self.options.load_timeout_s)

    def _event(self, event: Event) -> Event:
        self.events.append(event)
        LOG.warning("supervisor: %s", event) if event.kind in ("stub-died", "server-died", "recover-failed") else LOG.info(
            "supervisor: %s", event
        )
        if self.on_event is not None:
            with contextlib.suppress(Exception):  # a printing callback must not stop supervision
                self.on_event(event)
        return event

    # -- checks ---------------------------------------------------------------------------------

    def baseline(self) -> Counter[str]:
        """The stubs each python-backend model should have: its configured instance count, read
        from ``REPO/<model>/config.pbtxt`` (what `dead_models` compares against). Counting live
        stubs instead would be wrong during a reload, when old and new stubs overlap."""
        self.expected = configured_stubs(self.server.model_repository)
        return self.expected

    def dead_models(self) -> list[str]:
        """Models with fewer live stubs than at start (their stub was killed or crashed)."""
        now = stub_counts(self.server.shm_prefix)
        return [m for m, n in sorted(self.expected.items()) if now.get(m, 0) < n]

    # -- repairs --------------------------------------------------------------------------------

    def recover(self, model: str, detected_at: float | None = None) -> bool:
        """Unload ``model`` (health turns not-ready), then load the ensemble, which loads the
        missing step again with fresh stubs; wait for them. An event either way; returns whether
        it serves again. (Loading the step itself would leave the ensemble unloaded: Triton
        drops an ensemble whose step is unloaded.)"""
        t0 = detected_at if detected_at is not None else time.monotonic()
        admin = self.admin
        try:
            if model != ENSEMBLE:
                with contextlib.suppress(ServeError):  # the unload of a dead stub may complain
                    admin.unload(model)
            admin.load(ENSEMBLE)
            self._wait_stubs(lambda now: now.get(model, 0) >= self.expected.get(model, 0), model)
        except ServeError as e:
            self._failed_reloads[model] += 1
            self._event(Event("recover-failed", model, time.monotonic() - t0, str(e).splitlines()[0]))
            return False
        self._failed_reloads[model] = 0
        self._event(Event("recovered", model, time.monotonic() - t0))
        return True

    def _wait_stubs(self, done: Callable[[Counter[str]], bool], what: str) -> Counter[str]:
        deadline = time.monotonic() + self.options.load_timeout_s
        while True:
            now = stub_counts(self.server.shm_prefix)
            if done(now):
                return now
            if self._stop.is_set():
                raise ServeError(f"{what}: stopped while waiting for its stubs")
            if time.monotonic() > deadline:
                raise ServeError(f"{what}: stubs not back within {self.options.load_timeout_s:.0f} s ({dict(now)})")
            time.sleep(0.02)

    def restart_server(self, reason: str) -> None:
        """Stop what is left of the server and start it again, within the restart budget."""
        now = time.monotonic()
        while self._restarts and now - self._restarts[0] > self.options.restart_window_s:
            self._restarts.popleft()
        if len(self._restarts) >= self.options.max_server_restarts:
            tail = read_log_tail(self.server.log_path, getattr(self.server, "_log_start", 0))
            raise ServeError(
                f"tritonserver failed {len(self._restarts) + 1} times in {self.options.restart_window_s:.0f} s "
                f"({reason}); giving up; last lines of {self.server.log_path}:\n{tail}"
            )
        self._restarts.append(now)
        t0 = time.monotonic()
        self.server.stop(timeout=5.0)
        self.server.start(timeout=self.options.load_timeout_s)
        self.baseline()
        self._failed_reloads.clear()
        self._event(Event("server-restarted", "", time.monotonic() - t0, reason))

    def reload(self) -> float:
        """Load the ensemble again (what ``deploy --force`` asks for with SIGHUP): Triton reloads
        every model whose files changed on disk and keeps serving the old ones until the new
        ones are ready, so what is served becomes what is on disk without an outage. Returns the
        seconds it took."""
        t0 = time.monotonic()
        self.admin.load(ENSEMBLE)
        self.baseline()  # the new configs' instance counts
        seconds = time.monotonic() - t0
        self._event(Event("reloaded", "", seconds))
        return seconds

    def drain(self) -> float:
        """Unload the ensemble: in-flight requests finish, new ones get 404 at once; wait until
        it is gone or ``drain_timeout_s``. Returns the seconds it took."""
        t0 = time.monotonic()
        admin = AdminClient(self.server.http_url, self.key, timeout=self.options.drain_timeout_s)
        detail = ""
        try:
            admin.unload(ENSEMBLE)
            deadline = t0 + self.options.drain_timeout_s
            while time.monotonic() < deadline:
                states = {m.get("name"): m.get("state") for m in admin.index()}
                if states.get(ENSEMBLE) not in ("READY", "UNLOADING"):
                    break
                time.sleep(0.05)
            else:
                detail = f"still unloading after {self.options.drain_timeout_s:.0f} s"
        except ServeError as e:
            detail = str(e).splitlines()[0]
        seconds = time.monotonic() - t0
        self._event(Event("drained", ENSEMBLE, seconds, detail))
        return seconds

    # -- the loop -------------------------------------------------------------------------------

    def request_reload(self) -> None:
        self._reload.set()

    def stop(self, signum: int = 0) -> None:
        self.stop_signal = self.stop_signal or signum
        self._stop.set()

    def tick(self) -> None:
        """One round of checks and repairs."""
        if not self.server.is_running():
            proc = getattr(self.server, "_proc", None)
            code = proc.returncode if proc is not None else None
            self._event(Event("server-died", "", 0.0, f"exit code {code}"))
            self.restart_server(f"tritonserver exited with code {code}")
            return
        if self._reload.is_set():
            self._reload.clear()
            self.reload()
            return
        dead = self.dead_models()
        if not dead:
            return
        detected = time.monotonic()
        for model in dead:
            self._event(Event("stub-died", model))
        for model in dead:
            self.recover(model, detected)
        if any(self._failed_reloads[m] >= 2 for m in dead):
            self.restart_server(f"{', '.join(dead)} could not be reloaded")

    def run(self) -> int:
        """Supervise until `stop`; then drain and stop the server. Returns the stop signal."""
        if not self.expected:
            self.baseline()
        try:
            while not self._stop.wait(self.options.poll_s):
                self.tick()
            if self.server.is_running():
                self.drain()
        finally:
            self.server.stop()
        return self.stop_signal


def write_state(repo: Path, server: TritonServer, key_file: Path | None) -> Path:
    """``REPO/.rgalign-serve.<pid>.json``: who serves this repository (see `rgalign.serve.server.live`)."""
    deploy_json = repo / "deploy.json"
    state = {
        "pid": os.getpid(),
        "server_pid": server.pid,
        "http_url": server.http_url,
        "grpc_url": server.grpc_url,
        "key_file": os.fspath(key_file) if key_file is not None else None,
        "deploy_mtime_ns": deploy_json.stat().st_mtime_ns if deploy_json.is_file() else None,
        "updated": time.time(),
    }
    path = state_file(repo)
    write_json_atomic(path, state)
    return path


def serve(
    server: TritonServer,
    key: str | None,
    *,
    options: SupervisorOptions | None = None,
    start_timeout: float = 120.0,
    on_ready: Callable[[TritonServer], None] | None = None,
    on_event: Callable[[Event], None] | None = None,
    key_file: Path | None = None,
    supervisor_ready: Callable[[Supervisor], None] | None = None,
) -> int:
    """Start ``server``, supervise it until SIGINT / SIGTERM (drain, then stop), reload on SIGHUP.
    Returns the stop signal (0 when stopped through the supervisor from another thread).
    Signal handlers are installed in the main thread only and restored afterwards."""
    sup = Supervisor(server, key, options, on_event)
    repo = server.model_repository

    def on_stop(signum: int, _frame: Any) -> None:
        sup.stop(signum)

    def on_hup(_signum: int, _frame: Any) -> None:
        sup.request_reload()

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig, handler in ((signal.SIGINT, on_stop), (signal.SIGTERM, on_stop), (signal.SIGHUP, on_hup)):
            previous[sig] = signal.signal(sig, handler)
    state_path = state_file(repo)
    try:
        if not server.is_running():
            server.start(timeout=start_timeout)
        sup.baseline()
        write_state(repo, server, key_file)
        if on_ready is not None:
            on_ready(server)
        if supervisor_ready is not None:
            supervisor_ready(sup)
        original_event = sup.on_event

        def event_and_state(event: Event) -> None:
            if event.kind in ("server-restarted", "reloaded"):
                with contextlib.suppress(OSError):
                    write_state(repo, server, key_file)
            if original_event is not None:
                original_event(event)

        sup.on_event = event_and_state
        return sup.run()
    finally:
        server.stop()
        with contextlib.suppress(OSError):
            state_path.unlink(missing_ok=True)
        for sig, old in previous.items():
            signal.signal(sig, old)
