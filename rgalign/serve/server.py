"""Run a real Triton Inference Server as a child process: start, wait for readiness, stop cleanly.

By default the server is the CPU ``tritonserver`` bundled in the ``nvidia-pytriton`` wheel; a
container's binary can be given instead (``tritonserver=PATH``). What the wheel's server needs,
measured (SPEC §6), and done here:

- the wheel's ``backends/python/`` lacks ``triton_python_backend_stub``:
  :func:`prepare_python_backend` builds a backend folder of our own with the stub for the running
  Python;
- ``LD_LIBRARY_PATH`` must hold the wheel's ``nvidia_pytriton.libs`` (the stub's RPATH,
  ``$ORIGIN/../../../../nvidia_pytriton.libs``, no longer points there once it is copied; without
  it the stub cannot start and the server hangs while loading) and the interpreter's ``LIBDIR``;
  the venv's ``bin`` goes first on ``PATH`` so the stub's interpreter finds the venv's packages;
- ``--disable-auto-complete-config --strict-model-config=true``: configs are complete (we write
  them) and the server skips asking every backend to fill them in;
- ``--http-port 0`` binds but never says which port: free ports are chosen here, and while
  polling ``/v2/health/ready`` the process is checked to be alive (a dead server is reported with
  the tail of its log, not waited on until the deadline).

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
import importlib.util
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

from rgalign.errors import ServeError

LOG = logging.getLogger(__name__)

INSTALL_HINT = "run `pip install -e .[serve]` (nvidia-pytriton) or pass --tritonserver PATH"
_STUB = "triton_python_backend_stub"
_SHM_DIR = Path("/dev/shm")
# Lines of the server log quoted in errors: enough to show the failing model and its traceback.
_LOG_TAIL_LINES = 40
# Seconds Triton waits at shutdown for in-flight requests *and idle client connections* (a client
# that keeps its HTTP connection open holds the server for the whole timeout; Triton's default is
# 30 s). Our requests take milliseconds, so 5 s is ample, keeps Ctrl-C prompt, and stays below
# stop()'s default deadline of 20 s, so a graceful exit happens before we resort to SIGKILL.
DEFAULT_EXIT_TIMEOUT_S = 5
# Seconds the python-backend stubs get to exit on their own after the server has gone.
_STUB_GRACE_S = 2.0


# --------------------------------------------------------------------------------------------
# Locating the binary and preparing the python backend


def _pytriton_root() -> Path | None:
    """The installed ``pytriton`` package folder, found without importing it (importing pytriton
    pulls in its whole client stack)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _wheel_dirs() -> tuple[Path, Path]:
    """``(pytriton/tritonserver, nvidia_pytriton.libs)`` of the installed wheel, or ServeError."""
    root = _pytriton_root()
    if root is None:
        raise ServeError(
            f"tritonserver not found: nvidia-pytriton is not installed; {INSTALL_HINT}"
        )
    return root / "tritonserver", root.parent / "nvidia_pytriton.libs"


def find_tritonserver(path: str | os.PathLike[str] | None = None) -> Path:
    """The ``tritonserver`` binary to run: ``path`` when given (a file, or a name on ``PATH``),
    else the one inside the nvidia-pytriton wheel. Raises ServeError saying what to do."""
    if path is not None:
        candidate = Path(path).expanduser()
        if not candidate.exists() and os.sep not in str(path):
            found = shutil.which(str(path))
            candidate = Path(found) if found else candidate
        if not candidate.is_file():
            raise ServeError(
                f"tritonserver not found at {path}; pass --tritonserver PATH to an existing binary"
            )
        if not os.access(candidate, os.X_OK):
            raise ServeError(
                f"tritonserver at {candidate} is not executable; run `chmod +x {candidate}`"
            )
        return candidate.resolve()
    server_dir, _ = _wheel_dirs()
    binary = server_dir / "bin" / "tritonserver"
    if not binary.is_file():
        raise ServeError(
            f"tritonserver not found: the nvidia-pytriton wheel has no {binary}; {INSTALL_HINT}"
        )
    return binary


def is_wheel_tritonserver(binary: Path) -> bool:
    """Whether ``binary`` is the nvidia-pytriton wheel's server (it needs our env and backend)."""
    root = _pytriton_root()
    if root is None:
        return False
    return Path(binary).resolve() == (root / "tritonserver" / "bin" / "tritonserver").resolve()


def default_workdir() -> Path:
    """Where rgalign keeps the prepared backend folder: ``$RGALIGN_CACHE_DIR`` or
    ``$XDG_CACHE_HOME/rgalign`` (``~/.cache/rgalign``), then ``triton/``."""
    base = os.environ.get("RGALIGN_CACHE_DIR")
    if not base:
        base = os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "rgalign"
        )
    return Path(base) / "triton"


def _same_file(src: Path, dst: Path) -> bool:
    try:
        a, b = src.stat(), dst.stat()
    except FileNotFoundError:
        return False
    return a.st_size == b.st_size and int(a.st_mtime) == int(b.st_mtime)


def _copy_atomic(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` (mode and mtime kept) unless it is already there. Temp file then
    ``os.replace``: a concurrent server never sees a half-copied stub."""
    if _same_file(src, dst):
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def prepare_python_backend(workdir: str | os.PathLike[str] | None = None) -> Path:
    """Build (idempotently) a Triton backend directory for the wheel's server and return it.

    ``<workdir>/backends-py3.X/python/`` gets the wheel's ``libtriton_python.so`` and
    ``triton_python_backend_utils.py`` plus ``triton_python_backend_stub`` for the running
    interpreter's major.minor, copied from ``python_backend_stubs/3.X/``: the wheel ships no stub
    beside the backend, and a stub built for another Python cannot load our packages. The folder
    is per Python version, so venvs of different Pythons can share one workdir.
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    server_dir, _ = _wheel_dirs()
    src_backend = server_dir / "backends" / "python"
    stub = server_dir / "python_backend_stubs" / version / _STUB
    if not stub.is_file():
        stubs = (server_dir / "python_backend_stubs").glob("3.*")
        available = sorted((p.name for p in stubs), key=lambda v: tuple(map(int, v.split("."))))
        raise ServeError(
            f"the nvidia-pytriton wheel has no python backend stub for Python {version} "
            f"(it has {', '.join(available) or 'none'}); use one of those Pythons, or pass "
            "--tritonserver PATH to a container's server"
        )
    sources = [
        src_backend / "libtriton_python.so",
        src_backend / "triton_python_backend_utils.py",
        stub,
    ]
    missing = [str(p) for p in sources if not p.is_file()]
    if missing:
        raise ServeError(
            f"the nvidia-pytriton wheel is incomplete (missing {', '.join(missing)}); "
            f"reinstall it: {INSTALL_HINT}"
        )
    backends = Path(workdir) if workdir is not None else default_workdir()
    backends = backends / f"backends-py{version}"
    target = backends / "python"
    try:
        target.mkdir(parents=True, exist_ok=True)
        for src in sources:
            _copy_atomic(src, target / src.name)
    except OSError as e:
        raise ServeError(
            f"cannot prepare the python backend in {target}: {e}; "
            "set RGALIGN_CACHE_DIR to a writable folder"
        ) from e
    return backends


def server_env(binary: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the server (and its python-backend stubs) run with; see the module doc."""
    env = dict(os.environ if base is None else base)
    libs: list[str] = []
    if is_wheel_tritonserver(binary):
        libs.append(str(_wheel_dirs()[1]))
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        libs.append(libdir)
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
    # Not resolved: a venv's python is a symlink, and its folder (with pyvenv.cfg one level up)
    # is what makes the stub's interpreter use the venv's site-packages.
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin, env["PATH"]]) if env.get("PATH") else venv_bin
    return env


def free_ports(host: str, count: int) -> list[int]:
    """``count`` distinct ports free on ``host`` now (all held open together, so they differ).
    Another process may still take one before the server binds it: start() retries then."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(family, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# --------------------------------------------------------------------------------------------
# Processes and shared memory left behind


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


def _read_tail(path: Path | None, start: int = 0, lines: int = _LOG_TAIL_LINES) -> str:
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


# --------------------------------------------------------------------------------------------
# The server


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
                tail = _read_tail(self.log_path, self._log_start)
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
                tail = _read_tail(self.log_path, self._log_start)
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
            deadline = time.monotonic() + _STUB_GRACE_S
            while time.monotonic() < deadline and find_processes(proc.pid, self.shm_prefix):
                time.sleep(0.05)
            leftovers = find_processes(proc.pid, self.shm_prefix)
            if leftovers:
                LOG.warning(
                    "killing %d process(es) tritonserver left behind: %s", len(leftovers), leftovers
                )
                for pid in leftovers:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
        for path in shm_files(self.shm_prefix):
            try:
                path.unlink()
            except OSError as e:  # pragma: no cover - another user's file cannot carry our prefix
                LOG.warning("cannot remove %s: %s", path, e)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        if self._owns_log and not failed and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
        self._proc = None
        _LIVE.discard(self)

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
                code = server._proc.returncode if server._proc is not None else None
                tail = _read_tail(server.log_path, server._log_start)
                server._cleanup(failed=True)
                raise ServeError(
                    f"tritonserver exited unexpectedly (code {code}); "
                    f"last lines of {server.log_path}:\n{tail}"
                )
        return received[0] if received else 0
    finally:
        server.stop(timeout=stop_timeout)
        for sig, old in previous.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
