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


def _deploy(export: Path, tmp_path_factory: pytest.TempPathFactory, layout: str) -> Path:
    from rgalign.serve.repository.deploy import DeployOptions, deploy

    repo = tmp_path_factory.mktemp(f"serve_repo_{layout}") / "repo"
    deploy(export, repo, DeployOptions(max_batch=MAX_BATCH, threads=1, layout=layout))
    return repo


@pytest.fixture(scope="session")
def serve_repo(serve_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``rgalign deploy --layout ensemble`` of `serve_export` (python backend, fp32, max batch 8,
    1 thread each)."""
    return _deploy(serve_export, tmp_path_factory, "ensemble")


@pytest.fixture(scope="session")
def fused_repo(serve_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``rgalign deploy --layout fused`` of `serve_export`, with the same options."""
    return _deploy(serve_export, tmp_path_factory, "fused")


@pytest.fixture(scope="session")
def layout_repos(serve_repo: Path, fused_repo: Path) -> dict[str, Path]:
    return {"ensemble": serve_repo, "fused": fused_repo}


@pytest.fixture(scope="session")
def serve_records() -> list[dict]:
    """100 raw requests of the tiny synthetic dataset (the fake run's data)."""
    from rgalign.data.encoders import FeatureEncoders
    from rgalign.data.requests import build_requests
    from rgalign.data.synth import tiny_dataset

    ds = tiny_dataset()
    return build_requests(ds, FeatureEncoders.fit(ds), "train").raw[:100]
