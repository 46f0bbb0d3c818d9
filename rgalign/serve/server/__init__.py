"""A real Triton Inference Server as a child process, by concern:

- binary.py: locate ``tritonserver`` (the nvidia-pytriton wheel's, or a given one), build the
  python-backend folder and the environment it needs, choose free ports;
- procs.py: find what a server left behind (``/proc`` scan by process group or marker, shared
  memory by prefix), remove it, quote the useful part of its log;
- lifecycle.py: `TritonServer` (start, wait for ready, stop, clean up; a context manager) and
  `run_forever` (block until a signal), which uses only its public methods;
- supervisor.py: what `rgalign serve` runs: dead stubs reloaded (not-ready meanwhile), a dead
  server restarted, SIGHUP reload from disk, SIGTERM drain;
- admin.py: the restricted admin APIs, their key, the model-control client;
- live.py: who serves a repository (``deploy`` refuses it unless ``--force``, then reloads).
"""

from rgalign.serve.server.binary import (
    INSTALL_HINT,
    default_workdir,
    find_tritonserver,
    free_ports,
    is_wheel_tritonserver,
    prepare_python_backend,
    server_env,
    wheel_dirs,
)
from rgalign.serve.server.lifecycle import DEFAULT_EXIT_TIMEOUT_S, TritonServer, run_forever
from rgalign.serve.server.procs import find_processes, kill_leftovers, read_log_tail, remove_shm, shm_files

__all__ = [
    "DEFAULT_EXIT_TIMEOUT_S",
    "INSTALL_HINT",
    "TritonServer",
    "default_workdir",
    "find_processes",
    "find_tritonserver",
    "free_ports",
    "is_wheel_tritonserver",
    "kill_leftovers",
    "prepare_python_backend",
    "read_log_tail",
    "remove_shm",
    "run_forever",
    "server_env",
    "shm_files",
    "wheel_dirs",
]
