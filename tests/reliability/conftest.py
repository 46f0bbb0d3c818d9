"""Fixtures of the reliability suite: a tiny fp32 + int8 export, its int8 deployment, a served,
supervised Triton on it (restricted admin APIs), good records and the bad-request catalogue.
Every test here is marked ``reliability`` (skipped in tests/conftest.py without tritonserver);
all traffic goes to 127.0.0.1, bounded in count and time."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

MAX_BATCH = 16
ADMIN_KEY = "reliability-test-key"


@pytest.fixture(scope="session")
def int8_export(tiny_int8_export: Path) -> Path:
    """The session's fp32 + int8 export (tests/conftest.py)."""
    return tiny_int8_export


@pytest.fixture(scope="session")
def int8_repo(int8_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """int8, python backend, max batch 16, a 2 ms queue delay so concurrent requests batch."""
    from rgalign.serve.repository.deploy import DeployOptions, deploy

    repo = tmp_path_factory.mktemp("rel_repo") / "repo"
    deploy(int8_export, repo, DeployOptions(precision="int8", max_batch=MAX_BATCH, threads=1, queue_delay_us=2000))
    return repo


@pytest.fixture(scope="session")
def records() -> list[dict]:
    from rgalign.data.encoders import FeatureEncoders
    from rgalign.data.requests import build_requests
    from rgalign.data.synth import tiny_dataset

    ds = tiny_dataset()
    return [dict(r) for r in build_requests(ds, FeatureEncoders.fit(ds), "train").raw[:48]]


class Served:
    """A started TritonServer and its Supervisor (running in a thread)."""

    def __init__(self, server, supervisor) -> None:
        self.server = server
        self.supervisor = supervisor

    @property
    def url(self) -> str:
        return self.server.http_url


@pytest.fixture(scope="session")
def served(int8_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`int8_repo` served as `rgalign serve` serves it: explicit model control, restricted admin
    APIs (key `ADMIN_KEY`), supervised (fast polling)."""
    from rgalign.serve.server.admin import restricted_args
    from rgalign.serve.server import TritonServer
    from rgalign.serve.server.supervisor import Supervisor, SupervisorOptions

    log = tmp_path_factory.mktemp("rel_log") / "tritonserver.log"
    server = TritonServer(
        int8_repo, model_control="explicit", log_file=log, extra_args=restricted_args(ADMIN_KEY)
    ).start(timeout=120)
    sup = Supervisor(server, ADMIN_KEY, SupervisorOptions(poll_s=0.1))
    sup.baseline()
    thread = threading.Thread(target=sup.run, daemon=True)
    thread.start()
    try:
        yield Served(server, sup)
    finally:
        sup.stop()
        thread.join(timeout=60)
        server.stop()
