"""Shared fixtures of the serving tests: one small real export (tests/conftest.py's
`tiny_fp32_export`), its deployment, and 100 raw requests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def serve_export(tiny_fp32_export: Path) -> Path:
    """A real export (fp32) of the fake 50-intent run (tests/conftest.py)."""
    return tiny_fp32_export


# Max batch of the test deployment: small, so that "a batch over the maximum" is cheap to send.
MAX_BATCH = 8


@pytest.fixture(scope="session")
def serve_repo(serve_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``rgalign deploy`` of `serve_export` (python backend, fp32, max batch 8, 1 thread each)."""
    from rgalign.serve.repository.deploy import DeployOptions, deploy

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
