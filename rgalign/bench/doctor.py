"""`rgalign doctor`: what is installed here and which paths (CPU, GPU, TensorRT, Triton) *work*.

Each check tries the thing rather than listing it: an ONNX Runtime execution provider is OK only
when a session created with it alone runs a tiny graph *on it* (ORT silently falls back to the
CPU when a GPU provider cannot load: that is reported as FALLBACK, not OK); tritonserver is run
with ``--help`` under the environment `rgalign serve` gives it.

Statuses: OK, MISSING (an optional piece is absent: its paths are unavailable), FALLBACK (a
provider loads but runs elsewhere), BROKEN (installed but failing). Only a BROKEN or MISSING
*required* check (the CPU path: torch, onnx, onnxruntime's CPU provider, transformers) makes
`Doctor.ok` false; every other check says what to do and leaves the exit code at 0.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any

from rgalign.progress import first_line

OK, MISSING, FALLBACK, BROKEN = "OK", "MISSING", "FALLBACK", "BROKEN"


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str = ""
    fix: str = ""  # what to do when not OK
    required: bool = False

    @property
    def failed(self) -> bool:
        return self.required and self.status != OK

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# (import name, distribution, required, what to do when missing)
PACKAGES = (
    ("torch", "torch", True, "pip install -e . (torch is a core dependency)"),
    ("onnx", "onnx", True, "pip install -e ."),
    ("onnxruntime", "onnxruntime", True, "pip install -e . (or onnxruntime-gpu on a GPU machine)"),
    ("transformers", "transformers", True, "pip install -e ."),
    ("onnxscript", "onnxscript", False, "pip install -e . (ORT fusions at export are skipped without it)"),
    ("tritonclient.http", "tritonclient", False, "pip install -e .[serve] (query, served benchmarks)"),
    ("tritonclient.grpc", "tritonclient", False, "pip install -e .[serve] (gRPC client, Triton configs)"),
    ("pytriton", "nvidia-pytriton", False, "pip install -e .[serve] (the bundled tritonserver)"),
    ("matplotlib", "matplotlib", False, "pip install matplotlib (bench.png)"),
)


def check_python() -> Check:
    v = sys.version_info
    ok = v >= (3, 10)
    return Check("python", OK if ok else BROKEN, f"{sys.version.split()[0]} ({sys.executable})",
                 "" if ok else "rgalign needs Python >= 3.10", required=True)


def check_package(module: str, dist: str, required: bool, fix: str) -> Check:
    import importlib

    version = _version(dist)
    try:
        importlib.import_module(module)
    except ImportError as e:
        status = MISSING if version is None else BROKEN
        return Check(module, status, "not installed" if version is None else f"{version} fails to import: {first_line(e, typed=True, limit=200)}",
                     fix, required)
    except Exception as e:  # noqa: BLE001 - a package that crashes on import is broken, not missing
        return Check(module, BROKEN, f"{version}: import fails: {first_line(e, typed=True, limit=200)}", fix, required)
    return Check(module, OK, version or "installed", required=required)


def _tiny_graph() -> bytes:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "doctor",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


_PROVIDER_FIX = {
    "CUDAExecutionProvider": "needs a CUDA GPU, the CUDA/cuDNN libraries onnxruntime-gpu was built for, "
                             "and onnxruntime-gpu (not onnxruntime) installed",
    "TensorrtExecutionProvider": "needs the CUDA provider working plus TensorRT's libraries (libnvinfer) "
                                 "on the library path",
}


def check_providers() -> list[Check]:
    """One check per provider ONNX Runtime lists: a session with it alone runs a tiny MatMul."""
    try:
        import numpy as np
        import onnxruntime as ort
    except Exception as e:  # noqa: BLE001
        return [Check("onnxruntime providers", BROKEN, first_line(e, typed=True, limit=200), "pip install -e .", required=True)]
    model = _tiny_graph()
    out = []
    for provider in ort.get_available_providers():
        if provider == "AzureExecutionProvider":
            continue  # a remote-endpoint provider, not a local compute path
        required = provider == "CPUExecutionProvider"
        fix = _PROVIDER_FIX.get(provider, "")
        try:
            so = ort.SessionOptions()
            so.log_severity_level = 4  # a failed GPU provider logs errors: we report it ourselves
            sess = ort.InferenceSession(model, so, providers=[provider])
            y = sess.run(None, {"x": np.ones((1, 4), np.float32)})[0]
            used = sess.get_providers()
        except Exception as e:  # noqa: BLE001
            out.append(Check(f"ORT {provider}", BROKEN, first_line(e, typed=True, limit=200), fix, required))
            continue
        if provider not in used:
            out.append(Check(f"ORT {provider}", FALLBACK, f"listed, but the session runs on {', '.join(used)}",
                             fix, required))
        elif not np.allclose(y, 1.0):
            out.append(Check(f"ORT {provider}", BROKEN, "ran, with a wrong result", fix, required))
        else:
            out.append(Check(f"ORT {provider}", OK, "session created and ran", required=required))
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        out.append(Check("ORT CUDAExecutionProvider", MISSING, "not in this onnxruntime build",
                         "on a GPU machine: pip uninstall onnxruntime && pip install onnxruntime-gpu"))
    return out


def check_gpu() -> Check:
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        return Check("GPU (torch.cuda)", BROKEN, first_line(e, typed=True, limit=200), "pip install -e .")
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        return Check("GPU (torch.cuda)", MISSING, f"torch {torch.__version__} ({build}) sees no CUDA GPU",
                     "GPU paths (CUDA/TensorRT providers, engines) need an NVIDIA GPU and a CUDA build of torch")
    try:
        x = torch.ones(4, device="cuda")
        ok = float((x * 2).sum().item()) == 8.0
    except Exception as e:  # noqa: BLE001
        return Check("GPU (torch.cuda)", BROKEN, first_line(e, typed=True, limit=200), "check the NVIDIA driver (nvidia-smi)")
    name = torch.cuda.get_device_name(0)
    return Check("GPU (torch.cuda)", OK if ok else BROKEN,
                 f"{torch.cuda.device_count()} x {name}, CUDA {torch.version.cuda}")


def check_tensorrt() -> Check:
    fix = "pip install -e .[gpu] on a GPU machine (TensorRT's libraries are not on PyPI for every platform)"
    try:
        import tensorrt
    except ImportError:
        return Check("TensorRT", MISSING, "the tensorrt package is not installed", fix)
    except Exception as e:  # noqa: BLE001
        return Check("TensorRT", BROKEN, first_line(e, typed=True, limit=200), fix)
    try:
        tensorrt.Builder(tensorrt.Logger(tensorrt.Logger.ERROR))
    except Exception as e:  # noqa: BLE001 - the stub wheel imports but cannot build
        return Check("TensorRT", BROKEN, f"{tensorrt.__version__}: cannot create a builder: {first_line(e, typed=True, limit=200)}",
                     "needs a CUDA GPU and the TensorRT libraries")
    return Check("TensorRT", OK, f"{tensorrt.__version__}: builder created")


def check_compile() -> Check:
    """torch.compile's inductor writes and compiles C++ on the CPU: it needs a compiler."""
    cc = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++") or shutil.which("clang++")
    if cc is None:
        return Check("torch.compile (C++ compiler)", MISSING, "no g++ / c++ / clang++ on PATH",
                     "install a C++ compiler (apt-get install g++) for torch.compile; `bench --no-compile` skips it")
    return Check("torch.compile (C++ compiler)", OK, cc)


def check_tritonserver() -> Check:
    fix = "pip install -e .[serve] (nvidia-pytriton ships a CPU tritonserver), or pass --tritonserver PATH"
    try:
        from rgalign.serve.server import find_tritonserver, prepare_python_backend, server_env
    except Exception as e:  # noqa: BLE001
        return Check("tritonserver", MISSING, f"serving code unavailable: {first_line(e, typed=True, limit=200)}", fix)
    try:
        binary = find_tritonserver(None)
    except Exception as e:  # noqa: BLE001
        return Check("tritonserver", MISSING, first_line(e, typed=True, limit=200), fix)
    try:
        proc = subprocess.run([os.fspath(binary), "--help"], env=server_env(binary), capture_output=True,
                              text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Check("tritonserver", BROKEN, f"{binary}: {first_line(e, typed=True, limit=200)}", fix)
    if "Usage: tritonserver" not in (proc.stdout + proc.stderr):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return Check("tritonserver", BROKEN, f"{binary} does not run: {tail[0][:200]}", fix)
    try:
        with tempfile.TemporaryDirectory(prefix="rgalign-doctor-") as tmp:
            prepare_python_backend(tmp)  # the stub for this Python exists and copies: then serve can
    except Exception as e:  # noqa: BLE001
        return Check("tritonserver", BROKEN, f"{binary} runs, but the python backend cannot be prepared: "
                     f"{first_line(e, typed=True, limit=200)}", fix)
    return Check("tritonserver", OK, f"{binary} runs; python backend stub for Python "
                 f"{sys.version_info.major}.{sys.version_info.minor} available")


def check_perf_analyzer() -> Check:
    """NVIDIA's perf_analyzer (tritonclient 2.51.0's binary, `rgalign.bench.perf_analyzer`):
    found and runs, so `rgalign bench --url` and `rgalign tune` measure with it."""
    from rgalign.bench import perf_analyzer

    binary, about = perf_analyzer.available()
    fix = ("run `rgalign install-perf-analyzer` (or `make install`); without it `rgalign bench` "
           "measures with its own client and `rgalign tune` cannot run")
    if binary is None:
        found, _ = perf_analyzer.find()
        return Check("perf_analyzer", BROKEN if found else MISSING, about, fix)
    return Check("perf_analyzer", OK, about)


CHECKS: tuple[Callable[[], Check | list[Check]], ...] = (
    check_python,
    *(lambda m=m, d=d, r=r, f=f: check_package(m, d, r, f) for m, d, r, f in PACKAGES),
    check_providers,
    check_gpu,
    check_tensorrt,
    check_compile,
    check_tritonserver,
    check_perf_analyzer,
)


@dataclass(frozen=True)
class Doctor:
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        """False only when a required (CPU path) check failed."""
        return not any(c.failed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [c.to_dict() for c in self.checks]}


def run_doctor() -> Doctor:
    out: list[Check] = []
    for check in CHECKS:
        try:
            got = check()
        except Exception as e:  # noqa: BLE001 - a check that crashes is reported, the others still run
            got = Check(getattr(check, "__name__", "check"), BROKEN, first_line(e, typed=True, limit=200))
        out.extend(got if isinstance(got, list) else [got])
    return Doctor(tuple(out))
