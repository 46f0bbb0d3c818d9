"""Offline failures are one line (no traceback) and killed writers leave nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rgalign.errors import ConfigError
from rgalign.io import STALE_UNTAGGED_S, atomic_dir


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def test_truncated_ranker_is_one_line_for_export_and_the_loader_eval_uses(tmp_path):
    from fakes import make_fake_run
    from rgalign.models.qe_ranker import QERanker

    run = make_fake_run(tmp_path)
    weights = run / "stages" / "2-reward" / "ranker" / "model.safetensors"
    _truncate(weights)
    with pytest.raises(ConfigError, match=r"model\.safetensors is unreadable .*truncated or corrupt"):
        QERanker.load(weights.parent)  # what `rgalign eval` and `export` load rankers with
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run(
        [sys.executable, "-m", "rgalign", "export", str(run), "--out", str(tmp_path / "export")],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert r.returncode != 0
    assert "Traceback" not in r.stdout + r.stderr
    assert "model.safetensors is unreadable" in r.stdout + r.stderr
    assert not (tmp_path / "export").exists()


def test_truncated_reasoner_head_is_one_line(tmp_path):
    from fakes import make_fake_run
    from rgalign.models.reasoner import Reasoner

    run = make_fake_run(tmp_path)
    head = run / "stages" / "1-warmup" / "reasoner" / "head.safetensors"
    _truncate(head)
    with pytest.raises(ConfigError, match="head.safetensors is unreadable"):
        Reasoner.load(head.parent)


def test_killed_writers_temporary_folders_are_removed(tmp_path):
    final = tmp_path / "export"
    # a writer killed with SIGKILL: its pid no longer exists
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / f".export.{dead.pid}.abc123.tmp"
    (left / "reasoner").mkdir(parents=True)
    alive = tmp_path / f".export.{os.getpid()}.live99.tmp"  # a writer still running: kept
    alive.mkdir()
    legacy_old = tmp_path / ".export.zz9q.tmp"  # an older rgalign's name, long abandoned
    legacy_old.mkdir()
    old = time.time() - STALE_UNTAGGED_S - 60
    os.utime(legacy_old, (old, old))
    legacy_new = tmp_path / ".export.k3j2.tmp"  # maybe still being written: kept
    legacy_new.mkdir()
    with atomic_dir(final) as tmp:
        (tmp / "x").write_text("1")
    assert (final / "x").read_text() == "1"
    assert not left.exists() and not legacy_old.exists()
    assert alive.exists() and legacy_new.exists()
    assert sorted(p.name for p in tmp_path.glob(".export.*.tmp")) == sorted([alive.name, legacy_new.name])
