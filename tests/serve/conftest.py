"""Shared fixtures of the serving tests: one small real export (the fake run of tests/export,
fp32, torch's legacy exporter without fusions: ~7 s instead of ~25 s with dynamo, and what is
deployed does not depend on the exporter), its deployment, and 100 raw requests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def _make_fake_run():
    """`make_fake_run` from tests/export/conftest.py (tests folders are not packages)."""
    path = Path(__file__).parents[1] / "export" / "conftest.py"
    spec = importlib.util.spec_from_file_location("rgalign_tests_export_conftest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_fake_run


@pytest.fixture(scope="session")
def serve_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real export (fp32) of the fake 50-intent run."""
    import torch

    from rgalign.export import export_run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a busy machine: see tests/export/conftest.py
    try:
        base = tmp_path_factory.mktemp("serve_export")
        run = _make_fake_run()(base)
        out = base / "export"
        export_run(run, out, precisions=("fp32",), exporter="legacy", fuse=False, threads=1)
    finally:
        torch.set_num_threads(threads)
    return out


# Max batch of the test deployment: small, so that "a batch over the maximum" is cheap to send.
MAX_BATCH = 8


@pytest.fixture(scope="session")
def serve_repo(serve_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``rgalign deploy`` of `serve_export` (python backend, fp32, max batch 8, 1 thread each)."""
    from rgalign.serve.deploy import DeployOptions, deploy

    repo = tmp_path_factory.mktemp("serve_repo") / "repo"
    deploy(serve_export, repo, DeployOptions(max_batch=MAX_BATCH, threads=1))
    return repo


@pytest.fixture(scope="session")
def serve_records() -> list[dict]:
    """100 raw requests of the tiny synthetic dataset (the fake run's data)."""
    from rgalign.data.encoders import FeatureEncoders
    from rgalign.data.requests import build_requests
    from rgalign.data.synth import tiny_dataset

    ds = tiny_dataset()
    return build_requests(ds, FeatureEncoders.fit(ds), "train").raw[:100]
