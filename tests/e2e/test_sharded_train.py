"""`rgalign train --shard-data on`: each rank reads only its shard of the log, and what the run
reports is still the whole log's. Two processes (torchrun, gloo) through stages 0-6 on a tiny
synthetic log give the test metrics that `rgalign eval` computes on the whole data in one
process for the same checkpoints; one process gives what ``--shard-data off`` gives; a rank
without a single training request still steps with the others. About a minute on 2 cores."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fakes import E2E_DATA, TINY_TRAIN
from rgalign.data.encoders import FeatureEncoders
from rgalign.data.loader import load_dataset
from rgalign.data.requests import build_requests
from rgalign.errors import ConfigError
from rgalign.training import trainer
from rgalign.training.config import TrainConfig
from rgalign.training.shard_data import use_sharded_data
from rgalign.data.synth import synthesize

WORKER = Path(__file__).with_name("sharded_worker.py")
REPO = Path(__file__).resolve().parents[2]
TOL = 1e-6


def _free_port() -> int:
    with socket.socket() as sock:  # torchrun's port 0 hangs the rendezvous: pick one
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(*args: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), str(WORKER), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The tiny synthetic log, in row groups of 128 impressions (shards are made of row groups)."""
    d = synthesize(tmp_path_factory.mktemp("data") / "d", **E2E_DATA)
    table = pq.read_table(d / "impressions.parquet")
    pq.write_table(table, d / "impressions.parquet", row_group_size=128)
    return d


@pytest.fixture(scope="module")
def two_ranks(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "sharded2"
    _torchrun("train", str(data), str(out))
    return out


def _rows(result: dict) -> dict[str, dict[str, float]]:
    rows = {f"per_stage/{m}": r for m, r in result["per_stage"].items()}
    rows.update({f"test/{m}": r for m, r in result["test"].items()})
    rows["popularity"] = result["popularity"]
    return rows


def _assert_close(got: dict, want: dict, tol: float) -> None:
    assert set(got) == set(want)
    for name, row in want.items():
        assert set(got[name]) == set(row), name
        for key, value in row.items():
            if math.isnan(value):
                assert math.isnan(got[name][key]), (name, key)
            else:
                assert abs(got[name][key] - value) <= tol, (name, key, got[name][key], value)


def test_two_ranks_report_what_eval_computes_on_the_whole_data(two_ranks, data, tmp_path):
    got = json.loads((two_ranks / "metrics.json").read_text())
    assert set(got["per_stage"]) == {"0-baseline", "2-reward", "3-rg-sft", "4-dpo", "5-rg-cl", "6-calibrate"}
    copy = tmp_path / "run"
    shutil.copytree(two_ranks, copy)
    want = trainer.evaluate(copy, data, log=lambda m: None)  # one process, the whole log
    assert want["data"] == {"sharded": False}
    _assert_close(_rows(got), _rows(want), TOL)


def test_each_rank_held_only_its_shard(two_ranks, data):
    held = json.loads((two_ranks / "metrics.json").read_text())["data"]
    assert held["sharded"] and held["ranks"] == 2
    ds = load_dataset(data)
    enc = FeatureEncoders.fit(ds)
    for split, per_rank in held["requests_per_rank"].items():
        assert sum(per_rank) == len(build_requests(ds, enc, split)), split
    assert all(0 < n < sum(held["requests_per_rank"]["train"]) for n in held["requests_per_rank"]["train"])
    _assert_same_encoders(two_ranks / "encoders.json", enc)


def _assert_same_encoders(path: Path, want: FeatureEncoders) -> None:
    """The streamed fit (merged over the ranks) is the in-memory one: vocabularies exactly, the
    numeric statistics up to the order their sums were taken in (~1e-16 relative)."""
    got, want = FeatureEncoders.from_json(path).to_dict(), want.to_dict()
    assert {k: v for k, v in got.items() if k != "numeric"} == {k: v for k, v in want.items() if k != "numeric"}
    for g, w in zip(got["numeric"], want["numeric"], strict=True):
        assert g["name"] == w["name"] and g["mean"] == pytest.approx(w["mean"], rel=1e-12)
        assert g["std"] == pytest.approx(w["std"], rel=1e-12)


def test_one_process_sharded_equals_unsharded(data, tmp_path):
    cfg = TrainConfig.from_dict(TINY_TRAIN)
    runs = {}
    for mode in ("off", "on"):
        runs[mode] = trainer.train(data, tmp_path / mode, cfg, None, log=lambda m: None, quiet=True, shard_data=mode)
    held = runs["on"]["data"]
    assert held["sharded"] and held["ranks"] == 1 and runs["off"]["data"] == {"sharded": False}
    _assert_close(_rows(runs["on"]), _rows(runs["off"]), 0.0)  # to the bit
    for name in ("prompt_budget.json", "prompt_fields.json"):
        assert (tmp_path / "on" / name).read_text() == (tmp_path / "off" / name).read_text(), name
    _assert_same_encoders(tmp_path / "on" / "encoders.json", FeatureEncoders.from_json(tmp_path / "off" / "encoders.json"))


def test_a_rank_without_training_requests_still_steps(data, tmp_path):
    out = tmp_path / "loop.json"
    _torchrun("empty-rank", str(data), str(out))
    ranks = [json.loads(Path(f"{out}.{r}").read_text()) for r in (0, 1)]
    assert ranks[0]["steps"] > 0 and ranks[0] == ranks[1]  # same steps, same stop, same weights


def test_the_mode_is_chosen_by_size_or_by_flag(data, monkeypatch):
    from rgalign.data import shards

    assert use_sharded_data("on", data) and not use_sharded_data("off", data)
    assert not use_sharded_data("auto", data)  # 2,400 impressions: far below STREAM_ROWS
    monkeypatch.setattr(shards, "STREAM_ROWS", 2_400)
    assert use_sharded_data("auto", data)
    with pytest.raises(ConfigError, match="--shard-data 'maybe'"):
        use_sharded_data("maybe", data)
