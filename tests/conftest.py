"""Markers are skipped here, in one place, when their requirement is absent; a skip says why.

Under CI (CI=true), a missing tritonserver is an error rather than a skip: CI runs the triton tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _tritonserver_missing() -> str | None:
    try:
        from rgalign.serve.server import find_tritonserver
    except ImportError as e:  # serving code or its extra not installed
        return f"serving extra not installed ({e}); run `pip install -e .[serve]`"
    try:
        find_tritonserver(None)
    except Exception as e:  # noqa: BLE001 - any reason is the skip reason
        return str(e)
    return None


def _gpu_missing() -> str | None:
    from rgalign.bench.inprocess import gpu_missing

    return gpu_missing()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    checks = {"triton": _tritonserver_missing, "reliability": _tritonserver_missing, "gpu": _gpu_missing}
    reasons: dict[str, str | None] = {}
    for item in items:
        for marker, check in checks.items():
            if marker not in item.keywords:
                continue
            if marker not in reasons:
                reasons[marker] = check()
            reason = reasons[marker]
            if reason is None:
                continue
            if marker in ("triton", "reliability") and os.environ.get("CI") == "true":
                continue  # CI must run them: let the test fail on the missing server, loudly
            item.add_marker(pytest.mark.skip(reason=f"{marker}: {reason}"))


@pytest.fixture(scope="session")
def tiny_fp32_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real export (fp32) of `fakes.make_fake_run`, for the serving and benchmark tests: torch's
    legacy exporter without fusions (~7 s instead of ~25 s with dynamo; what they test does not
    depend on the exporter). Read-only: a test that changes an export copies it first."""
    import torch

    from fakes import make_fake_run
    from rgalign.export import export_run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a busy machine: see tests/export/conftest.py
    try:
        base = tmp_path_factory.mktemp("tiny_export")
        run = make_fake_run(base)
        out = base / "export"
        export_run(run, out, precisions=("fp32",), exporter="legacy", fuse=False, threads=1)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="session")
def tiny_int8_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real fp32 + int8 export of `fakes.make_fake_run` (~10 s), for the batch-invariance and
    reliability tests. Read-only."""
    import torch

    from fakes import make_fake_run
    from rgalign.export import export_run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base = tmp_path_factory.mktemp("tiny_int8_export")
        out = base / "export"
        export_run(make_fake_run(base), out, precisions=("fp32", "int8"), exporter="legacy", fuse=False, threads=1)
    finally:
        torch.set_num_threads(threads)
    return out
