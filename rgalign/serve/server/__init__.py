"""A real Triton Inference Server as a child process, by concern:

- binary.py: locate ``tritonserver`` (the nvidia-pytriton wheel's, or a given one), build the
  python-backend folder and the environment it needs, choose free ports;
- procs.py: find what a server left behind (``/proc`` scan by process group or marker, shared
  memory by prefix), remove it, quote the useful part of its log;
- lifecycle.py: `TritonServer` (start, wait for ready, stop, clean up; a context manager) and
  `run_forever` (the blocking `rgalign serve`), which uses only its public methods.
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
