"""Stages 0-2 end to end on a tiny on-disk dataset: artifacts, metrics, resume, bad input, DDP."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fakes import E2E_DATA, TINY_TRAIN
from rgalign.cli._app import app
from rgalign.data.synth import synthesize
from rgalign.errors import ConfigError, DataError
from rgalign.training import trainer
from rgalign.training.config import TrainConfig
from rgalign.artifacts.run import RunDir, final_models

METRICS = {"auc", "gauc", "logloss", "error_rate", "recall@3", "ndcg@3", "hitrate@3"}
COHORTS = {f"{kind}_{c}" for kind in ("gauc", "share") for c in ("seen_intents", "cold_intents", "seen_users", "cold_users")}



@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return synthesize(tmp_path_factory.mktemp("data") / "d", **E2E_DATA)


@pytest.fixture(scope="module")
def tiny_run(tiny_data, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("runs") / "run"
    result = trainer.train(tiny_data, out, TrainConfig.from_dict(TINY_TRAIN), [0, 1, 2], log=lambda m: None, quiet=True)
    return out, result


def test_stages_write_checkpoints_metrics_and_provenance(tiny_run):
    out, result = tiny_run
    run = RunDir(out)
    for i in (0, 1, 2):
        assert run.finished(i)
        info = run.stage_info(i)
        assert info["seconds"] > 0
        assert (run.stage_dir(i) / "losses.csv").read_text().count("\n") >= 2
    on_disk = json.loads((out / "metrics.json").read_text())
    assert set(on_disk["test"]) == {"baseline", "qe"}
    for model in ("baseline", "qe"):
        assert set(on_disk["test"][model]) == METRICS | COHORTS
        assert 0.0 <= on_disk["test"][model]["auc"] <= 1.0
    assert set(on_disk["relative_to_baseline"]["qe"]) == METRICS | COHORTS
    assert set(on_disk["popularity"]) == METRICS | COHORTS  # the item-popularity reference
    assert (out / "prompt_budget.json").is_file()
    info = json.loads((out / "run.json").read_text())
    assert info["seed"] == 0 and "torch" in info["versions"] and "git_commit" in info
    assert info["config"]["reasoner"]["hidden"] == 64
    reasoner_dir, ranker_dir = final_models(run)
    assert reasoner_dir == run.stage_dir(1) / "reasoner" and ranker_dir == run.stage_dir(2) / "ranker"
    assert (out / "encoders.json").is_file() and (out / "tokenizer").is_dir()
    assert not list((out / "stages").glob(".*")), "no temporary stage folders left behind"


def test_eval_recomputes_the_same_metrics(tiny_run, tiny_data):
    out, result = tiny_run
    again = trainer.evaluate(out, tiny_data, log=lambda m: None)
    for model in ("baseline", "qe"):
        for k in METRICS:
            assert again["test"][model][k] == pytest.approx(result["test"][model][k], rel=1e-6, abs=1e-9)


def test_rerun_skips_finished_stages(tiny_run, tiny_data):
    out, _ = tiny_run
    before = {p: p.stat().st_mtime_ns for p in (out / "stages").rglob("*.safetensors")}
    logs: list[str] = []
    trainer.train(tiny_data, out, TrainConfig.from_dict(TINY_TRAIN), [0, 1, 2], log=logs.append, quiet=True)
    assert sum("finished earlier, skipped" in m for m in logs) == 3
    assert {p: p.stat().st_mtime_ns for p in (out / "stages").rglob("*.safetensors")} == before


def test_interrupted_stage_leaves_nothing_and_resumes(tiny_run, tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(tiny_run[0], out)
    shutil.rmtree(RunDir(out).stage_dir(2))

    def boom(ctx):
        raise KeyboardInterrupt  # as if Ctrl-C hit the middle of stage 2

    monkeypatch.setitem(trainer.STAGES, 2, boom)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(tiny_data, out, TrainConfig.from_dict(TINY_TRAIN), [0, 1, 2], log=lambda m: None, quiet=True)
    assert not RunDir(out).finished(2)
    monkeypatch.undo()
    logs: list[str] = []
    trainer.train(tiny_data, out, TrainConfig.from_dict(TINY_TRAIN), [0, 1, 2], log=logs.append, quiet=True)
    assert RunDir(out).finished(2)
    assert sum("skipped" in m for m in logs) == 2


def test_other_config_on_existing_run_is_refused(tiny_run, tiny_data):
    cfg = dict(TINY_TRAIN, seed=5)
    with pytest.raises(ConfigError, match="seed|another config"):
        trainer.train(tiny_data, tiny_run[0], TrainConfig.from_dict(cfg), [0], log=lambda m: None, quiet=True)


def test_invalid_dataset_stops_before_training(tiny_data, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_data, bad)
    import pandas as pd

    imp = pd.read_parquet(bad / "impressions.parquet")
    imp.loc[3, "label"] = 2
    imp.to_parquet(bad / "impressions.parquet")
    with pytest.raises(DataError, match="label"):
        trainer.train(bad, tmp_path / "run", TrainConfig.from_dict(TINY_TRAIN), [0], log=lambda m: None, quiet=True)
    assert not (tmp_path / "run" / "stages").exists()


@pytest.mark.parametrize("make", ["missing", "not_causal"])
def test_bad_backbone_is_one_clear_line(tiny_data, tmp_path, make):
    from rgalign.cli import main

    path = tmp_path / "backbone"
    if make == "not_causal":
        from transformers import BertConfig, BertModel

        BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)).save_pretrained(path)
        from rgalign.models.tokenizer import train_tokenizer

        train_tokenizer(["a b c d"] * 10, vocab_size=300).save_pretrained(path)
    r = subprocess.run(
        [sys.executable, "-m", "rgalign", "train", str(tiny_data), "--out", str(tmp_path / "run"), "--stages", "1",
         "--backbone", str(path), "--quiet"],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode != 0
    assert "Traceback" not in r.stdout + r.stderr
    assert "backbone" in (r.stdout + r.stderr).lower()


def test_cli_stages_option_is_validated(tiny_data, tmp_path):
    res = CliRunner().invoke(app, ["train", str(tiny_data), "--out", str(tmp_path / "r"), "--stages", "9"])
    assert res.exit_code != 0


@pytest.mark.slow
def test_ddp_two_processes_give_the_same_artifacts(tiny_data, tiny_run, tmp_path):
    """torchrun --nproc_per_node 2 (gloo on CPU) runs stages 0-2 and writes the same files."""
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY_TRAIN))
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with socket.socket() as sock:  # torchrun's --master_port 0 hangs the rendezvous: pick one
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
         "-m", "rgalign", "train", str(tiny_data), "--out", str(out), "--config", str(cfg), "--stages", "0-2",
         "--quiet"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    single = sorted(p.relative_to(tiny_run[0]).as_posix() for p in tiny_run[0].rglob("*") if p.is_file())
    multi = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert multi == single
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]) == {"baseline", "qe"}


def test_eval_of_a_truncated_ranker_is_one_line(tiny_run, tiny_data, tmp_path, capsys, monkeypatch):
    from rgalign.cli import main, state

    monkeypatch.setattr(state, "verbose", False)
    out, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    weights = copy / "stages" / "2-reward" / "ranker" / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    with pytest.raises(SystemExit) as e:
        main(["eval", str(copy), str(tiny_data)])
    printed = capsys.readouterr()
    assert e.value.code != 0
    text = printed.out + printed.err
    assert "model.safetensors is unreadable" in text and "Traceback" not in text and "unexpected" not in text


def test_text_intent_prior_is_recorded_and_falls_back_to_the_reasoner(tiny_run, tiny_data, tmp_path, monkeypatch):
    """Stage 2 re-run with ``intent_prior: text`` and no sentence encoder: the prior's text comes
    from the reasoner (stage.json says so and why); the baseline keeps plain popularity."""
    monkeypatch.setenv("RGALIGN_SENTENCE_ENCODER", "off")
    out = tmp_path / "run"
    shutil.copytree(tiny_run[0], out)
    shutil.rmtree(out / "stages" / "2-reward")
    (out / "metrics.json").unlink()
    info = json.loads((out / "run.json").read_text())
    info["config"]["intent_prior"] = "text"
    (out / "run.json").write_text(json.dumps(info))
    cfg = TrainConfig.from_dict({**TINY_TRAIN, "intent_prior": "text"})
    trainer.train(tiny_data, out, cfg, [0, 1, 2], log=lambda m: None, quiet=True)
    prior = RunDir(out).stage_info(2)["intent_prior"]
    assert prior["text"].startswith("reasoner (turned off by RGALIGN_SENTENCE_ENCODER")
    assert "ridge" in prior and prior["intents_fit"] > 0
    assert "intent_prior" not in RunDir(out).stage_info(0)
