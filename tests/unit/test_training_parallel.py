"""Multi-process training on CPU with gloo: FSDP2 and DDP give the losses of one process, on one
"machine" (torchrun --nproc_per_node 2) and on two (torchrun --nnodes 2, a c10d rendezvous on
127.0.0.1), and a training state written by 2 processes resumes on 1 and back (safetensors +
JSON, no pickle). The tiny reasoner, 10 steps: about 30 s for all of it on 2 cores."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rgalign.training.distributed import DistInfo
from rgalign.training.global_sft import lr_factor
from rgalign.training.parallel import FSDP_AUTO_PARAMS, resolve_strategy, shard_units

WORKER = Path(__file__).with_name("parallel_worker.py")
REPO = Path(__file__).resolve().parents[2]
STEPS = 10  # 2 epochs x 5 global batches (parallel_worker)
STOP = 4  # the interrupted runs stop here and resume from their state
RTOL = 1e-4  # float summation order (reduce-scatter, padded widths) is all that differs


def _free_port() -> int:
    with socket.socket() as sock:  # torchrun's port 0 hangs the rendezvous: pick one
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)


def _jobs(tmp: Path, name: str, jobs: list[dict]) -> Path:
    f = tmp / f"{name}.json"
    f.write_text(json.dumps(jobs))
    return f


def _torchrun(args: list[str], jobs: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", *args, str(WORKER), str(jobs)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())


def _wait(procs: list[subprocess.Popen]) -> None:
    outs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, list[float]]:
    """Every run's per-step losses: one process in this interpreter, 2 processes in one torchrun,
    2 'nodes' of one process each."""
    sys.path.insert(0, str(WORKER.parent))
    import parallel_worker

    tmp = tmp_path_factory.mktemp("parallel")
    one = DistInfo()
    out = {"one": parallel_worker.run_job({"strategy": "auto"}, one)}
    parallel_worker.run_job({"strategy": "auto", "checkpoint": str(tmp / "state1"), "stop_after": STOP}, one)
    shutil.copytree(tmp / "state1", tmp / "state1to2")
    # stopped at the end of the first epoch: the resume must draw the second epoch's order
    parallel_worker.run_job({"strategy": "auto", "checkpoint": str(tmp / "state1to2ddp"), "stop_after": 5}, one)
    two = [
        {"strategy": "fsdp", "losses": str(tmp / "fsdp.json")},
        {"strategy": "ddp", "losses": str(tmp / "ddp.json")},
        {"strategy": "fsdp", "checkpoint": str(tmp / "state2"), "stop_after": STOP},
        {"strategy": "fsdp", "checkpoint": str(tmp / "state1to2"), "losses": str(tmp / "resume1to2.json")},
        {"strategy": "ddp", "checkpoint": str(tmp / "state1to2ddp"), "losses": str(tmp / "resume1to2ddp.json")},
    ]
    procs = [_torchrun(["--standalone", "--nproc_per_node", "2", "--master_port", str(_free_port())],
                       _jobs(tmp, "two", two))]
    port = _free_port()
    nodes = _jobs(tmp, "nodes", [{"strategy": "fsdp", "losses": str(tmp / "nodes.json")}])
    procs += [_torchrun(["--nnodes", "2", "--nproc_per_node", "1", "--node-rank", str(n), "--rdzv-backend", "c10d",
                         "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "rgalign-test"], nodes) for n in (0, 1)]
    _wait(procs)
    for name in ("fsdp", "ddp", "resume1to2", "resume1to2ddp", "nodes"):
        out[name] = json.loads((tmp / f"{name}.json").read_text())
    out["resume2to1"] = parallel_worker.run_job({"strategy": "auto", "checkpoint": str(tmp / "state2")}, one)
    out["state_files"] = sorted(p.name for p in (tmp / "state2").iterdir())
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fsdp", "ddp", "nodes"])
def test_two_processes_give_the_losses_of_one(runs, name):
    assert len(runs[name]) == STEPS
    np.testing.assert_allclose(runs[name], runs["one"], rtol=RTOL)
    assert runs["one"][-1] < runs["one"][0]  # it trains


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resume2to1", "resume1to2", "resume1to2ddp"])
def test_a_state_resumes_on_another_world_size(runs, name):
    """Stopped after 4 steps (the DDP one after 5, an epoch's end) on one world size, resumed on
    the other: the continued losses are those of the uninterrupted run (the log carries the
    first steps from the state)."""
    assert len(runs[name]) == STEPS
    np.testing.assert_allclose(runs[name], runs["one"], rtol=RTOL)


@pytest.mark.slow
def test_the_state_holds_no_pickle(runs):
    assert runs["state_files"] == ["model.safetensors", "optimizer.safetensors", "train_state.json"]


def test_a_stage_picks_its_loop(tmp_path):
    """One process without --checkpoint-every keeps loops.train_sft (its results unchanged);
    torchrun, --checkpoint-every or a state left to resume take the global-batch loop."""
    from rgalign.training import loops, train_state
    from rgalign.training.global_sft import sft_for_stage, train_sft_global

    state = tmp_path / "train_state" / "1-warmup"
    assert sft_for_stage(DistInfo(), state) is loops.train_sft
    two = sft_for_stage(DistInfo(0, 2, "auto"), state)
    assert two.func is train_sft_global and two.keywords["checkpoint_dir"] is None
    assert sft_for_stage(DistInfo(checkpoint_every=5), state).keywords["checkpoint_dir"] == state
    state.mkdir(parents=True)
    (state / train_state.STATE_JSON).write_text("{}")
    assert sft_for_stage(DistInfo(), state).keywords["checkpoint_dir"] == state


def test_lr_schedule_never_divides_by_zero():
    for total in range(1, 60):
        f = [lr_factor(s, total) for s in range(total)]
        assert all(0 < x <= 1 for x in f) and max(f) == 1.0


def test_auto_picks_ddp_for_small_models_and_fsdp_for_big_ones():
    small = torch.nn.Linear(4, 4)
    assert resolve_strategy(small, DistInfo()) == "none"
    assert resolve_strategy(small, DistInfo(0, 2, "auto")) == "ddp"
    assert resolve_strategy(small, DistInfo(0, 2, "fsdp")) == "fsdp"
    big = torch.nn.Linear(FSDP_AUTO_PARAMS // 1000 + 1, 1000, bias=False, device="meta")
    assert resolve_strategy(big, DistInfo(0, 2, "auto")) == "fsdp"


def test_fsdp_units_are_the_decoder_layers():
    sys.path.insert(0, str(WORKER.parent.parent))
    from tiny import tiny_reasoner

    units = shard_units(tiny_reasoner())
    assert [type(u).__name__ for u in units] == ["Qwen3DecoderLayer"] * 2
