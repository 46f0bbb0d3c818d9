"""Fixtures of the export tests; the fake run itself is `fakes.make_fake_run` (shared with the
serving and benchmark tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fakes import make_fake_run


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """PyTorch at one thread in these tests: the reference models are tiny, and on a busy 2-core
    machine (ONNX Runtime's pool beside it, or another process) OpenMP's default pool stalls
    every small op (measured: 1.3 s instead of 0.01 s for one parity check)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def fake_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_run(tmp_path_factory.mktemp("fake"))


@pytest.fixture(scope="session")
def exported(fake_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One full export (fp32, fp16, int8) of the fake run, shared by the tests that read it."""
    from rgalign.export import export_run

    out = tmp_path_factory.mktemp("exp") / "export"
    manifest = export_run(fake_run, out, threads=1)
    return out, manifest
