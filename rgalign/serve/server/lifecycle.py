"""Run a real Triton Inference Server as a child process: start, wait for readiness, stop cleanly.

What the wheel's server needs (SPEC §6) is prepared in `binary.py`.

The server runs in its own process group (so a terminal's Ctrl-C reaches us, not it, and leftover
python-backend stubs can be found) and names its shared-memory regions with a prefix unique to
it; :meth:`TritonServer.stop` removes both. At shutdown Triton waits for in-flight requests *and*
for open HTTP keep-alive connections, up to ``--exit-timeout-secs``: close HTTP clients before
stopping, or the stop takes that long (and the server exits with code 1).

Example::

    with TritonServer("triton_repo") as server:
        client = tritonclient.http.InferenceServerClient(server.http_address)
        ...
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import secrets
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

from rgalign.errors import ServeError
from rgalign.serve.server.binary import find_tritonserver, free_ports, is_wheel_tritonserver, prepare_python_backend, server_env
from rgalign.serve.server.procs import kill_leftovers, read_log_tail, remove_shm

LOG = logging.getLogger(__name__)

# Seconds Triton waits at shutdown for in-flight requests *and idle client connections* (a client
# that keeps its HTTP connection open holds the server for the whole timeout; Triton's default is
# 30 s). Our requests take milliseconds, so 5 s is ample, keeps Ctrl-C prompt, and stays below
# stop()'s default deadline of 20 s, so a graceful exit happens before we resort to SIGKILL.
DEFAULT_EXIT_TIMEOUT_S = 5


_LIVE: weakref.WeakSet[TritonServer] = weakref.WeakSet()


@atexit.register
def _stop_live_servers() -> None:
    """A Python that exits without stop() must not leave a server (and its stubs) running."""
    for server in list(_LIVE):
        with contextlib.suppress(Exception):  # best effort at interpreter exit
            server.stop()


def _url_host(host: str) -> str:
    """The address a client on this machine connects to for a server bound to ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class TritonServer:
    """A ``tritonserver`` child process serving ``model_repository``; a context manager.

    Ports left as None are chosen free at start. ``model_control="explicit"`` loads
    ``load_models`` (all models when None) at start and allows load/unload over the API.
    ``log_file`` None: a temporary log, deleted by a clean stop (kept, and named in the error,
    when the server fails). ``extra_args`` are appended to the command line verbatim.

    Attributes after start(): ``http_url`` (``http://host:port``, for browsers and urllib),
    ``http_address`` / ``grpc_url`` (``host:port``, what tritonclient.http / tritonclient.grpc
    take), ``metrics_url``, ``ready_seconds`` (start to ready), ``log_path``, ``pid`` (None
    once stopped; ``last_pid`` keeps it), ``shm_prefix``, ``command``. start() after stop()
    restarts the server (new free ports unless given).
    """

    def __init__(
        self,
        model_repository: str | os.PathLike[str],
        host: str = "127.0.0.1",
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        tritonserver: str | os.PathLike[str] | None = None,
        log_file: str | os.PathLike[str] | None = None,
        model_control: str = "none",
        extra_args: Sequence[str] = (),
        *,
        load_models: Sequence[str] | None = None,
        workdir: str | os.PathLike[str] | None = None,
        backend_directory: str | os.PathLike[str] | None = None,
        exit_timeout_s: int = DEFAULT_EXIT_TIMEOUT_S,
        log_verbose: int = 0,
    ) -> None:
        if model_control not in ("none", "explicit"):
            raise ServeError(f"model_control must be 'none' or 'explicit', got {model_control!r}")
        if load_models is not None and model_control != "explicit":
            raise ServeError("load_models needs model_control='explicit'")
        self.model_repository = Path(model_repository)
        self.host = host
        self._ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        self._tritonserver = tritonserver
        self._log_file = Path(log_file) if log_file is not None else None
        self.model_control = model_control
        self.load_models = tuple(load_models) if load_models is not None else None
        self.extra_args = tuple(extra_args)
        self._workdir = workdir
        self._backend_directory = Path(backend_directory) if backend_directory is not None else None
        self.exit_timeout_s = exit_timeout_s
        self.log_verbose = log_verbose

        self.shm_prefix = f"rgalign{os.getpid()}_{secrets.token_hex(4)}_"
        self._proc: subprocess.Popen[bytes] | None = None
        self.last_pid: int | None = None  # of the latest server process, kept after stop()
        self._log_handle = None
        self.log_path: Path | None = None
        self._owns_log = False
        self.http_port: int | None = None
        self.grpc_port: int | None = None
        self.metrics_port: int | None = None
        self.ready_seconds: float | None = None
        self.command: list[str] = []
        self._log_start = 0

    # -- addresses --------------------------------------------------------------------------

    def _address(self, port: int | None) -> str:
        if port is None:
            raise ServeError("the server is not started; call start() first")
        return f"{_url_host(self.host)}:{port}"

    @property
    def http_address(self) -> str:
        return self._address(self.http_port)

    @property
    def http_url(self) -> str:
        return f"http://{self._address(self.http_port)}"

    @property
    def grpc_url(self) -> str:
        return self._address(self.grpc_port)

    @property
    def metrics_url(self) -> str:
        return f"http://{self._address(self.metrics_port)}/metrics"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- lifecycle --------------------------------------------------------------------------

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def is_ready(self, timeout: float = 1.0) -> bool:
        """Whether the process is alive and ``/v2/health/ready`` answers 200 (server and every
        model ready)."""
        if not self.is_running():
            return False
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=timeout) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def build_command(self, binary: Path, backend_directory: Path | None) -> list[str]:
        """The server's command line for the current ports (flags explained in the module doc)."""
        cmd = [
            str(binary),
            "--model-repository", str(self.model_repository.resolve()),
            "--model-control-mode", self.model_control,
            "--disable-auto-complete-config",
            "--strict-model-config=true",
            "--exit-on-error=true",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--log-verbose={self.log_verbose}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            "--http-address", self.host, f"--http-port={self.http_port}",
            "--grpc-address", self.host, f"--grpc-port={self.grpc_port}",
            "--metrics-address", self.host, f"--metrics-port={self.metrics_port}",
        ]  # fmt: skip
        if backend_directory is not None:
            cmd += ["--backend-directory", str(backend_directory)]
        if self.model_control == "explicit":
            for name in self.load_models if self.load_models is not None else ("*",):
                cmd.append(f"--load-model={name}")
        return cmd + list(self.extra_args)

    def start(self, timeout: float = 60.0) -> TritonServer:
        """Start the server and wait until it is ready; returns self.

        Raises ServeError, with the tail of the server log, when the server exits (a model that
        fails to load, a bad flag, a port in use) or is not ready within ``timeout`` seconds."""
        if self._proc is not None:
            raise ServeError("this server is already started; stop() it first")
        if not (self.model_repository / "").is_dir():
            raise ServeError(
                f"model repository {self.model_repository} is not a folder; "
                "run `rgalign deploy` first"
            )
        binary = find_tritonserver(self._tritonserver)
        backend_directory = self._backend_directory
        if backend_directory is None and is_wheel_tritonserver(binary):
            backend_directory = prepare_python_backend(self._workdir)
        env = server_env(binary)
        auto_ports = [name for name, port in self._ports.items() if port is None]
        # Free ports can be taken between our probe and the server's bind: retry with new ones.
        attempts = 3 if auto_ports else 1
        for attempt in range(1, attempts + 1):
            chosen_ports = free_ports(self.host, len(auto_ports))
            chosen = iter(chosen_ports)
            ports = {
                name: port if port is not None else next(chosen)
                for name, port in self._ports.items()
            }
            self.http_port, self.grpc_port, self.metrics_port = (
                ports["http"],
                ports["grpc"],
                ports["metrics"],
            )
            try:
                self._launch(binary, backend_directory, env)
                self._wait_ready(timeout)
                return self
            except _PortInUse as e:
                if attempt == attempts or e.port not in chosen_ports:
                    raise ServeError(str(e)) from None
                LOG.info("port taken before the server bound it; retrying with other ports")
            except BaseException:  # including KeyboardInterrupt during start
                self._cleanup(failed=True)
                raise
        raise ServeError("tritonserver did not start")  # pragma: no cover - loop always returns

    def _launch(self, binary: Path, backend_directory: Path | None, env: dict[str, str]) -> None:
        if self._log_file is None:
            fd, name = tempfile.mkstemp(prefix=f"tritonserver-{self.shm_prefix}", suffix=".log")
            os.close(fd)
            self.log_path, self._owns_log = Path(name), True
        else:
            self._log_file.parent.mkdir(parents=True, exist_ok=True)
            self.log_path, self._owns_log = self._log_file, False
        self.command = self.build_command(binary, backend_directory)
        LOG.debug("starting %s", " ".join(self.command))
        # stdout and stderr both go to the log: errors printed before Triton's logger is set up
        # (a missing library, a bad flag) and the python models' own prints end up there too.
        self._log_handle = open(self.log_path, "ab")  # noqa: SIM115 - closed in _cleanup
        self._log_start = self._log_handle.tell()  # a given log_file is appended to
        self._started_at = time.monotonic()
        self._proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # own process group: see the module doc
        )
        self.last_pid = self._proc.pid
        _LIVE.add(self)

    def _wait_ready(self, timeout: float) -> None:
        deadline = self._started_at + timeout
        delay = 0.02
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                code = self._proc.returncode
                tail = read_log_tail(self.log_path, self._log_start)
                self._cleanup(failed=True)
                in_use = _PORT_IN_USE.search(tail)
                if in_use:
                    raise _PortInUse(
                        int(in_use.group(1)),
                        f"tritonserver could not bind its ports ({self._ports_text()}); "
                        f"log {self.log_path}:\n{tail}",
                    )
                raise ServeError(
                    f"tritonserver exited with code {code} before it was ready; "
                    f"last lines of {self.log_path}:\n{tail}"
                )
            if self.is_ready(timeout=max(0.05, min(1.0, deadline - time.monotonic()))):
                self.ready_seconds = time.monotonic() - self._started_at
                LOG.info(
                    "tritonserver ready in %.2f s at %s (grpc %s)",
                    self.ready_seconds,
                    self.http_url,
                    self.grpc_url,
                )
                return
            if time.monotonic() >= deadline:
                tail = read_log_tail(self.log_path, self._log_start)
                self._cleanup(failed=True)
                raise ServeError(
                    f"tritonserver not ready after {timeout:.0f} s "
                    "(a model still loading? raise the timeout); "
                    f"last lines of {self.log_path}:\n{tail}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def _ports_text(self) -> str:
        ports = f"http {self.http_port}, grpc {self.grpc_port}, metrics {self.metrics_port}"
        return f"{ports} on {self.host}"

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM the server, SIGKILL it after ``timeout`` s, then remove what it left: stub
        processes and ``/dev/shm`` regions carrying our prefix. Returns the server's exit code
        (None when it was not running). Safe to call twice."""
        if self._proc is None:
            return None
        crashed = self._proc.poll() not in (None, 0)  # died by itself: keep its log
        code = self._terminate(timeout)
        self._cleanup(failed=crashed)
        return code

    def _terminate(self, timeout: float) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)  # the server alone: it finalizes its stubs itself
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                LOG.warning("tritonserver did not exit %.0f s after SIGTERM; killing it", timeout)
                self._killpg(signal.SIGKILL)
                proc.wait()
        return proc.returncode

    def _killpg(self, sig: int) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def _cleanup(self, failed: bool) -> None:
        """After the server process: kill what remains of its group and stubs, remove our shm
        regions, close (and maybe delete) the log. ``failed`` keeps the log for the error."""
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:  # a failed start: nothing to wait for
                self._killpg(signal.SIGKILL)
                proc.wait()
            kill_leftovers(proc.pid, self.shm_prefix)
        remove_shm(self.shm_prefix)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        if self._owns_log and not failed and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
        self._proc = None
        _LIVE.discard(self)

    def crash_error(self) -> ServeError:
        """For a server that exited by itself: clean up what it left (keeping its log) and return
        the error to raise, with its exit code and the tail of its log."""
        code = self._proc.returncode if self._proc is not None else None
        tail = read_log_tail(self.log_path, self._log_start)
        self._cleanup(failed=True)
        return ServeError(f"tritonserver exited unexpectedly (code {code}); last lines of {self.log_path}:\n{tail}")

    def __enter__(self) -> TritonServer:
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}, {self.http_url}" if self.is_running() else "stopped"
        return f"TritonServer({str(self.model_repository)!r}, {state})"


class _PortInUse(ServeError):
    """The server exited because ``port`` was in use (start() retries when it chose that port)."""

    def __init__(self, port: int, message: str) -> None:
        super().__init__(message)
        self.port = port


# Triton's words when a port is taken: "failed to start HTTP service: Unavailable - Socket
# '127.0.0.1:8000' already in use" (likewise for GRPC and Metrics).
_PORT_IN_USE = re.compile(r"Socket '[^']*:(\d+)' already in use")


def run_forever(
    server: TritonServer,
    *,
    start_timeout: float = 60.0,
    stop_timeout: float = 20.0,
    on_ready: Callable[[TritonServer], None] | None = None,
    stop_event: threading.Event | None = None,
    poll_interval: float = 0.5,
) -> int:
    """Start ``server`` (unless started), block until SIGINT, SIGTERM or ``stop_event``, then
    stop it cleanly.

    Returns the number of the signal that stopped it (0 for ``stop_event``). Raises ServeError
    (with the log tail) when the server dies by itself. ``on_ready`` runs once the server is
    ready (the CLI prints the URLs there). Signal handlers are installed only in the main thread
    and restored afterwards; from another thread, set ``stop_event`` to stop.
    """
    received: list[int] = []
    stop_event = stop_event if stop_event is not None else threading.Event()

    def handler(signum: int, _frame: object) -> None:
        received.append(signum)
        stop_event.set()

    previous: dict[int, object] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    try:
        if not server.is_running():
            server.start(timeout=start_timeout)
        if on_ready is not None:
            on_ready(server)
        while not stop_event.wait(poll_interval):
            if not server.is_running():
                raise server.crash_error()
        return received[0] if received else 0
    finally:
        server.stop(timeout=stop_timeout)
        for sig, old in previous.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
