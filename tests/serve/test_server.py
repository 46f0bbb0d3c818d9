"""A real tritonserver (the nvidia-pytriton wheel's) serving a toy python model and an ensemble.

The repository is built with rgalign.serve.repository.config, like `rgalign deploy` will build the real one.
One server is shared by the module; the lifecycle tests start their own.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from rgalign.errors import ServeError
from rgalign.serve.repository import config as tc
from rgalign.serve.server import TritonServer, find_processes, prepare_python_backend, shm_files

pytestmark = pytest.mark.triton

TOY_MODELS = Path(__file__).parent / "toy_models"
# Generous: ready takes ~0.7 s here, a failed load ~3.5 s; a loaded CI machine may be slower.
START_TIMEOUT = 60


def _toy_python_model(repo: Path, name: str, source: str) -> None:
    cfg = tc.python_model(
        name,
        inputs=[tc.TensorSpec("INPUT0", "FP32", (-1,))],
        outputs=[tc.TensorSpec("OUTPUT0", "FP32", (-1,))],
        max_batch_size=8,
        dynamic_batching=tc.dynamic_batching(
            preferred_batch_sizes=(4, 8), max_queue_delay_microseconds=2000
        ),
        instance_groups=[tc.instance_group(1, "cpu")],
    )
    tc.write_config(repo / name, cfg)
    shutil.copy(TOY_MODELS / source, tc.version_dir(repo / name) / "model.py")


def build_toy_repository(repo: Path, broken: bool = False) -> Path:
    """``add_one`` (x + 1) and the ensemble ``add_two`` (add_one twice: x + 2); ``broken`` adds
    a model whose initialize() raises."""
    _toy_python_model(repo, "add_one", "add_one.py")
    ensemble = tc.ensemble_model(
        "add_two",
        inputs=[tc.TensorSpec("X", "FP32", (-1,))],
        outputs=[tc.TensorSpec("Y", "FP32", (-1,))],
        steps=[
            tc.EnsembleStep("add_one", {"INPUT0": "X"}, {"OUTPUT0": "x_plus_one"}),
            tc.EnsembleStep("add_one", {"INPUT0": "x_plus_one"}, {"OUTPUT0": "Y"}),
        ],
        max_batch_size=8,
    )
    tc.write_config(repo / "add_two", ensemble)
    tc.version_dir(repo / "add_two")
    if broken:
        _toy_python_model(repo, "broken", "broken.py")
    return repo


@pytest.fixture(scope="module")
def toy_repo(tmp_path_factory) -> Path:
    return build_toy_repository(tmp_path_factory.mktemp("toy_repo"))


@pytest.fixture(scope="module")
def server(toy_repo, tmp_path_factory):
    srv = TritonServer(toy_repo, log_file=tmp_path_factory.mktemp("logs") / "tritonserver.log")
    srv.start(timeout=START_TIMEOUT)
    yield srv
    srv.stop()


def _http_client(server):
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(server.http_address)


def _grpc_client(server):
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(server.grpc_url)


def _http_infer(client, model, name, x):
    import tritonclient.http as httpclient

    inp = httpclient.InferInput(name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp])


def _grpc_infer(client, model, name, x):
    import tritonclient.grpc as grpcclient

    inp = grpcclient.InferInput(name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp])


def _assert_gone(pid: int, prefix: str) -> None:
    """The server process, every process of its group, our stubs and our shm files are gone."""
    assert (
        not Path(f"/proc/{pid}").exists()
        or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]
    )
    assert find_processes(pid, prefix) == []
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit() and _is_our_stub(p, prefix)]
    assert shm_files(prefix) == []
    assert not list(Path("/dev/shm").glob(f"{prefix}*"))


def _is_our_stub(proc_dir: Path, prefix: str) -> bool:
    try:
        cmdline = (proc_dir / "cmdline").read_bytes()
    except OSError:
        return False
    return b"triton_python_backend_stub" in cmdline and prefix.encode() in cmdline


def test_ready_fast_with_urls_bound_to_localhost(server):
    assert server.is_ready()
    assert server.ready_seconds is not None and server.ready_seconds < 30
    assert server.http_url.startswith("http://127.0.0.1:")
    assert server.grpc_url.startswith("127.0.0.1:")
    assert len({server.http_port, server.grpc_port, server.metrics_port}) == 3
    import time
    import urllib.error
    import urllib.request

    # Triton opens its metrics listener just after the HTTP one that answered ready: on a loaded
    # machine the first connection can come before it (seen once in a full CI run)
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(server.metrics_url, timeout=5) as r:
                assert b"nv_inference_request_success" in r.read()
            break
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_http_infer_model_and_ensemble(server):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    client = _http_client(server)
    try:
        np.testing.assert_array_equal(
            _http_infer(client, "add_one", "INPUT0", x).as_numpy("OUTPUT0"), x + 1
        )
        np.testing.assert_array_equal(_http_infer(client, "add_two", "X", x).as_numpy("Y"), x + 2)
    finally:
        client.close()


def test_grpc_infer_model_and_ensemble(server):
    x = np.arange(8, dtype=np.float32).reshape(8, 1) / 4  # exact in FP32: x + 1 + 1 == x + 2
    client = _grpc_client(server)
    try:
        np.testing.assert_allclose(
            _grpc_infer(client, "add_one", "INPUT0", x).as_numpy("OUTPUT0"), x + 1
        )
        np.testing.assert_allclose(_grpc_infer(client, "add_two", "X", x).as_numpy("Y"), x + 2)
        assert client.is_model_ready("add_two")
    finally:
        client.close()


def test_per_request_error_is_400_and_invalid_argument_and_server_keeps_serving(server):
    from tritonclient.utils import InferenceServerException

    bad = np.array([[-1.0, 2.0]], dtype=np.float32)
    http, grpc = _http_client(server), _grpc_client(server)
    try:
        with pytest.raises(InferenceServerException, match="must be >= 0") as e_http:
            _http_infer(http, "add_two", "X", bad)
        assert e_http.value.status() == "400"
        with pytest.raises(InferenceServerException, match="must be >= 0") as e_grpc:
            _grpc_infer(grpc, "add_one", "INPUT0", bad)
        assert e_grpc.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert server.is_ready()
        np.testing.assert_array_equal(
            _http_infer(http, "add_one", "INPUT0", abs(bad)).as_numpy("OUTPUT0"), abs(bad) + 1
        )
    finally:
        http.close()
        grpc.close()


def test_error_fails_only_its_own_request_in_a_batch(server):
    """Concurrent requests are batched by the dynamic batcher: the bad one fails alone."""
    from tritonclient.utils import InferenceServerException

    inputs = [np.full((1, 2), float(i), dtype=np.float32) for i in range(8)]
    inputs[3] = -inputs[3] - 1

    def call(x):
        client = _grpc_client(server)
        try:
            return _grpc_infer(client, "add_one", "INPUT0", x).as_numpy("OUTPUT0")
        except InferenceServerException as e:
            return e
        finally:
            client.close()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, inputs))
    assert isinstance(results[3], InferenceServerException)
    assert results[3].status() == "StatusCode.INVALID_ARGUMENT"
    for i, (x, out) in enumerate(zip(inputs, results, strict=True)):
        if i != 3:
            np.testing.assert_array_equal(out, x + 1)


def test_stop_cleans_up_then_restart_works(toy_repo, tmp_path):
    srv = TritonServer(toy_repo, log_file=tmp_path / "server.log")
    srv.start(timeout=START_TIMEOUT)
    pid, prefix = srv.pid, srv.shm_prefix
    assert find_processes(pid, None), "the stub runs in the server's process group"
    assert shm_files(prefix), "the python backend names its shm regions with our prefix"
    # Forced stop (SIGKILL at once) leaves stubs and shm files behind; stop() removes them.
    assert srv.stop(timeout=0) == -signal.SIGKILL
    _assert_gone(pid, prefix)
    assert not srv.is_ready() and srv.stop() is None  # stopping twice is harmless

    srv.start(timeout=START_TIMEOUT)  # same object, same prefix: a restart
    assert srv.pid != pid and srv.is_ready()
    client = _http_client(srv)
    x = np.ones((1, 4), dtype=np.float32)
    np.testing.assert_array_equal(_http_infer(client, "add_two", "X", x).as_numpy("Y"), x + 2)
    client.close()
    pid = srv.pid
    started = time.monotonic()
    assert srv.stop() == 0  # graceful: SIGTERM, the server unloads its models and exits 0
    assert time.monotonic() - started < 15
    _assert_gone(pid, prefix)


def test_broken_repository_fails_start_with_log_tail(tmp_path):
    repo = build_toy_repository(tmp_path / "repo", broken=True)
    srv = TritonServer(repo, log_file=tmp_path / "server.log")
    started = time.monotonic()
    with pytest.raises(ServeError, match="refusing to load") as e:
        srv.start(timeout=START_TIMEOUT)
    assert time.monotonic() - started < 30, (
        "a failed load is reported when the server exits, not at the deadline"
    )
    assert "exited with code" in str(e.value) and str(tmp_path / "server.log") in str(e.value)
    assert not srv.is_running()
    assert srv.pid is None and srv.last_pid is not None
    _assert_gone(srv.last_pid, srv.shm_prefix)


def test_missing_repository_and_bad_binary_fail_fast(tmp_path):
    with pytest.raises(ServeError, match="not a folder"):
        TritonServer(tmp_path / "nope").start()
    with pytest.raises(ServeError, match="--tritonserver PATH"):
        TritonServer(tmp_path, tritonserver=tmp_path / "no-such-binary").start()


def test_prepare_python_backend_is_idempotent(tmp_path):
    first = prepare_python_backend(tmp_path)
    stub = first / "python" / "triton_python_backend_stub"
    mtime = stub.stat().st_mtime_ns
    assert prepare_python_backend(tmp_path) == first and stub.stat().st_mtime_ns == mtime
    assert os.access(stub, os.X_OK)
    assert sorted(p.name for p in (first / "python").iterdir()) == [
        "libtriton_python.so",
        "triton_python_backend_stub",
        "triton_python_backend_utils.py",
    ]


def test_run_forever_stops_cleanly_on_sigterm(toy_repo, tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        from rgalign.serve.server import TritonServer, run_forever
        server = TritonServer({str(toy_repo)!r}, log_file={str(tmp_path / "server.log")!r})
        def ready(s):
            print(s.pid, s.shm_prefix, s.http_url, flush=True)
        sys.exit(0 if run_forever(server, on_ready=ready) in (2, 15) else 1)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline().split()
        assert len(line) == 3, "run_forever never became ready"
        pid, prefix = int(line[0]), line[1]
        assert Path(f"/proc/{pid}").exists()
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    _assert_gone(pid, prefix)


def test_port_given_and_taken_fails_with_the_port_named(toy_repo, tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = TritonServer(toy_repo, http_port=port, log_file=tmp_path / "server.log")
        with pytest.raises(ServeError, match=f"'127.0.0.1:{port}' already in use"):
            srv.start(timeout=START_TIMEOUT)
    _assert_gone(srv.last_pid, srv.shm_prefix)


def test_explicit_model_control_loads_what_it_is_told(toy_repo, tmp_path):
    srv = TritonServer(
        toy_repo, model_control="explicit", load_models=["add_one"], log_file=tmp_path / "s.log"
    )
    with srv:
        client = _grpc_client(srv)
        try:
            assert client.is_model_ready("add_one") and not client.is_model_ready("add_two")
            client.load_model("add_two")
            x = np.zeros((1, 1), dtype=np.float32)
            np.testing.assert_array_equal(
                _grpc_infer(client, "add_two", "X", x).as_numpy("Y"), x + 2
            )
        finally:
            client.close()
    _assert_gone(srv.last_pid, srv.shm_prefix)


def test_run_forever_in_a_thread_stops_on_event_and_reports_a_dead_server(toy_repo, tmp_path):
    import threading

    from rgalign.serve.server import run_forever

    def run_in_thread(srv, event):
        outcome: dict[str, object] = {}
        ready = threading.Event()

        def target():
            try:
                outcome["code"] = run_forever(srv, stop_event=event, on_ready=lambda s: ready.set())
            except ServeError as e:
                outcome["error"] = e

        thread = threading.Thread(target=target)
        thread.start()
        assert ready.wait(START_TIMEOUT), "run_forever never became ready"
        return thread, outcome

    srv = TritonServer(toy_repo, log_file=tmp_path / "server.log")
    event = threading.Event()
    thread, outcome = run_in_thread(srv, event)
    event.set()
    thread.join(30)
    assert outcome == {"code": 0}
    _assert_gone(srv.last_pid, srv.shm_prefix)

    thread, outcome = run_in_thread(srv, threading.Event())
    os.kill(srv.last_pid, signal.SIGKILL)  # the server dies under run_forever
    thread.join(30)
    assert isinstance(outcome.get("error"), ServeError)
    assert "exited unexpectedly" in str(outcome["error"])
    _assert_gone(srv.last_pid, srv.shm_prefix)


def test_no_stub_for_this_python_is_a_clear_error(tmp_path, monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(sys, "version_info", SimpleNamespace(major=3, minor=99))
    with pytest.raises(
        ServeError, match=r"no python backend stub for Python 3\.99 \(it has .*3\.11"
    ):
        prepare_python_backend(tmp_path)
