"""Locating ``tritonserver`` and preparing what it needs to run.

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
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import sys
import sysconfig
import tempfile
from pathlib import Path

from rgalign.errors import ServeError

INSTALL_HINT = "run `pip install -e .[serve]` (nvidia-pytriton) or pass --tritonserver PATH"
_STUB = "triton_python_backend_stub"


def _pytriton_root() -> Path | None:
    """The installed ``pytriton`` package folder, found without importing it (importing pytriton
    pulls in its whole client stack)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def wheel_dirs() -> tuple[Path, Path]:
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
    server_dir, _ = wheel_dirs()
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
    server_dir, _ = wheel_dirs()
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
        libs.append(str(wheel_dirs()[1]))
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
