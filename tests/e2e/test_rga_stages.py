"""Stages 3-6 (the RGA loop) end to end on the tiny dataset: two closed-loop rounds, the ablation
in metrics.json, frozen models left untouched, Best-of-N on disk, resume, bad input, the report."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from fakes import E2E_DATA, TINY_TRAIN
from rgalign.cli._app import app
from rgalign.data.synth import synthesize
from rgalign.errors import ConfigError, TrainError
from rgalign.training import trainer
from rgalign.training.alignment import CANDIDATES
from rgalign.training.rga import FrozenModels
from rgalign.models.reasoner import Reasoner
from rgalign.training.config import TrainConfig
from rgalign.training.context import LATENTS, load_latents, prefetch_test_latents
from rgalign.training.distributed import DistInfo
from rgalign.training.evaluate import latent_queries
from rgalign.artifacts.run import RunDir, final_models

METRICS = {"auc", "gauc", "logloss", "error_rate", "recall@3", "ndcg@3", "hitrate@3"}
ROUND0 = ["3-rg-sft", "4-dpo", "5-rg-cl", "6-calibrate"]
ROUND1 = [s + "-r1" for s in ROUND0]
# stage 6 re-fits on a sample of the ~210 training requests, as `calibrate.max_requests` allows
# the DPO generalisation check is opt-in (rgalign.training.config.DPOConfig): on here, so that
# both of its outcomes can show up in the two rounds
RGA_TRAIN = {**TINY_TRAIN, "calibrate": {**TINY_TRAIN["calibrate"], "max_requests": 150},
             "dpo": {**TINY_TRAIN["dpo"], "require_generalisation": True}}


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return synthesize(tmp_path_factory.mktemp("data") / "d", **E2E_DATA)


@pytest.fixture(scope="module")
def rga_run(data, tmp_path_factory) -> tuple[Path, dict, dict]:
    """Stages 0-2, then the file hashes of those stages, then two rounds of 3-6."""
    out = tmp_path_factory.mktemp("runs") / "run"
    cfg = TrainConfig.from_dict(RGA_TRAIN)
    trainer.train(data, out, cfg, [0, 1, 2], log=lambda m: None, quiet=True)
    before = _hashes(out / "stages")
    result = trainer.train(data, out, cfg, None, rounds=2, log=lambda m: None, quiet=True)
    return out, result, before


def test_two_rounds_write_every_stage_and_the_ablation(rga_run):
    out, result, _ = rga_run
    run = RunDir(out)
    for r in (0, 1):
        for i in (3, 4, 5, 6):
            assert run.finished(i, r), (i, r)
            assert run.stage_info(i, r)["round"] == r
    assert set(result["test"]) == {"baseline", "qe", "qe_rga", "qe_refit"}
    for m in result["test"].values():
        assert METRICS <= set(m)  # and GAUC per seen/cold cohort
    assert set(result["relative_to_baseline"]) == {"qe", "qe_rga", "qe_refit"}
    assert set(result["per_stage"]) == {"0-baseline", "2-reward", *ROUND0, *ROUND1}
    # qe_rga is the last round's calibrated ranker, and final_models deploys that pair
    assert result["test"]["qe_rga"] == result["per_stage"]["6-calibrate-r1"]
    reasoner_dir, ranker_dir = final_models(run)
    assert reasoner_dir == run.stage_dir(5, 1) / "reasoner"
    assert ranker_dir == run.stage_dir(6, 1) / "ranker"
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["test"]["qe_rga"] == pytest.approx(result["test"]["qe_rga"], nan_ok=True)


def test_each_round_starts_from_the_previous_one(rga_run):
    run = RunDir(rga_run[0])
    assert run.stage_info(3, 0)["policy_from"] == "stages/1-warmup/reasoner"
    assert run.stage_info(3, 0)["reward_model"] == "stages/2-reward/ranker"
    assert run.stage_info(3, 1)["policy_from"] == "stages/5-rg-cl/reasoner"
    assert run.stage_info(3, 1)["reward_model"] == "stages/6-calibrate/ranker"
    assert run.stage_info(3, 1)["reward_reasoner"] == "stages/5-rg-cl/reasoner"
    assert run.stage_info(4, 1)["reference"] == "stages/3-rg-sft-r1/reasoner"
    assert run.stage_info(6, 0)["reasoner"] == "stages/5-rg-cl/reasoner"
    assert run.stage_info(6, 1)["previous_ranker"] == "stages/6-calibrate/ranker"
    # the control re-fit reads the previous ranker's reasoner: round 0 the warm-up one
    assert run.stage_info(6, 0)["control"]["reasoner"] == "stages/1-warmup/reasoner"
    assert run.stage_info(6, 1)["control"]["reasoner"] == "stages/5-rg-cl/reasoner"
    assert (run.stage_dir(6, 1) / "control_ranker" / "model.safetensors").is_file()


def test_frozen_models_stay_frozen_in_every_stage(rga_run):
    out, _, before = rga_run
    run = RunDir(out)
    # each stage checksummed its frozen models before and after, and says so
    expected = {3: {"reward_model", "reward_reasoner"}, 4: {"reference"}, 5: {"target_encoder"},
                6: {"reasoner", "previous_ranker"}}
    for r in (0, 1):
        for i, names in expected.items():
            assert run.stage_info(i, r)["frozen_unchanged"] == {n: True for n in names}
    # and no stage rewrote an earlier stage's files (stages 0-2 are byte-identical)
    after = _hashes(out / "stages")
    assert {k: after[k] for k in before} == before


def test_calibrate_refits_on_the_same_sample_of_requests_in_every_round(rga_run, data):
    out, _, _ = rga_run
    run = RunDir(out)
    saved = [load_file(str(run.stage_dir(6, r) / LATENTS)) for r in (0, 1)]
    rows = saved[0]["train_rows"]
    assert rows.shape == (150,) and torch.equal(rows, torch.unique(rows))  # sorted, no repeats
    for r in (0, 1):
        assert run.stage_info(6, r)["requests"] == 150
        assert torch.equal(saved[r]["train_rows"], rows) and saved[r]["train"].shape[0] == 150
    ctx = trainer.prepare(data, out, TrainConfig.from_dict(RGA_TRAIN), DistInfo(), lambda m: None, True)
    assert len(ctx.splits["train"]) > 150
    # the control re-fit reads its latents from disk, never from the (here missing) reasoner: the
    # sample of stage 2's full-length latents in round 0, round 0's own sample in round 1
    nowhere = out / "no-reasoner"
    full = load_file(str(run.stage_dir(2) / LATENTS))
    q2 = load_latents(ctx, run.stage_dir(2), nowhere, rows.numpy())
    assert torch.equal(q2["train"], full["train"][rows]) and torch.equal(q2["valid"], full["valid"])
    q6 = load_latents(ctx, run.stage_dir(6, 0), nowhere, rows.numpy())
    assert torch.equal(q6["train"], saved[0]["train"]) and "train_rows" not in q6


def test_prefetched_test_latents_are_the_evaluations_and_leave_the_rng_alone(rga_run, data, monkeypatch):
    out, _, _ = rga_run
    ctx = trainer.prepare(data, out, TrainConfig.from_dict(RGA_TRAIN), DistInfo(), lambda m: None, True)
    reasoners = [RunDir(out).stage_dir(i) / "reasoner" for i in (5, 4)]
    torch.manual_seed(7)
    expected = torch.rand(4), torch.rand(4)
    torch.manual_seed(7)
    with prefetch_test_latents(ctx, reasoners):
        inside = torch.rand(4)  # a ranker's dropout draws while the thread works
    assert torch.equal(inside, expected[0]) and torch.equal(torch.rand(4), expected[1])
    for d in reasoners:
        direct = latent_queries(Reasoner.load(d), ctx.prompts("test"), ctx.config.infer_batch, DistInfo())
        assert torch.equal(ctx.test_latents[d.resolve()], direct)
    # an error in the thread reaches the caller
    ctx.test_latents.clear()

    def broken(*args, **kwargs):
        raise RuntimeError("encoding failed")

    monkeypatch.setattr("rgalign.training.context.latent_queries", broken)
    with pytest.raises(RuntimeError, match="encoding failed"):
        with prefetch_test_latents(ctx, reasoners[:1]):
            pass


def test_the_frozen_guard_catches_a_change():
    frozen = FrozenModels(model=torch.nn.Linear(3, 2))
    assert frozen.check("x") == {"model": True}
    with torch.no_grad():
        frozen.models["model"].weight[0, 0] += 1e-3
    with pytest.raises(TrainError, match="frozen model changed"):
        frozen.check("stage 9")


def test_best_of_n_on_disk_is_the_reward_argmax(rga_run):
    run = RunDir(rga_run[0])
    pools = [json.loads(line) for line in (run.stage_dir(3) / CANDIDATES).read_text().splitlines()]
    assert len(pools) == run.stage_info(3)["requests"] > 0
    for p in pools:
        assert len(p["candidates"]) == len(p["rewards"]) == TINY_TRAIN["rg_sft"].get("n_candidates", 8)
        assert p["best"] == max(range(len(p["rewards"])), key=lambda j: (p["rewards"][j], -j))
        assert p["rewards"][p["worst"]] == min(p["rewards"])
    info = run.stage_info(3)
    # (a reward model that kept its popularity start ties every candidate: equal up to rounding)
    eps = 1e-6
    assert info["reward"]["best_mean"] >= info["reward"]["candidates_mean"] - eps
    assert info["reward"]["candidates_mean"] >= info["reward"]["worst_mean"] - eps


def test_pools_carry_each_candidates_rewards_on_the_users_requests(rga_run, data):
    """dpo.pairs: user (the default): each pool also holds its candidates' rewards on up to
    ``dpo.user_requests`` clicked training requests of the same user, its own slate first (equal to
    the pool's rewards), the others that user's; stage 4 built its pairs from them."""
    run = RunDir(rga_run[0])
    pools = [json.loads(line) for line in (run.stage_dir(3) / CANDIDATES).read_text().splitlines()]
    ctx = trainer.prepare(data, rga_run[0], TrainConfig.from_dict(RGA_TRAIN), DistInfo(), lambda m: None, True)
    tr = ctx.splits["train"]
    limit = TrainConfig.from_dict(RGA_TRAIN).dpo.user_requests
    clicked = (tr.mask & (tr.labels > 0)).any(axis=1)
    more = 0
    for p in pools:
        u = p["user_rewards"]
        assert 1 <= len(u) <= limit and all(len(row) == len(p["candidates"]) for row in u)
        assert u[0] == pytest.approx(p["rewards"], abs=2e-6)  # its own slate, scored as stage 3 scored it
        others = int(clicked[tr.user_ids == tr.user_ids[p["row"]]].sum()) - 1
        assert len(u) == 1 + min(others, limit - 1)
        more += len(u) > 1
    assert more > 0
    assert run.stage_info(4)["pair_construction"] == "user"


def test_rg_cl_moves_latents_towards_the_clicked_intents(rga_run):
    info = RunDir(rga_run[0]).stage_info(5)
    assert info["requests"] > 0 and info["with_preferred_query"] > 0
    assert info["final_loss"] < info["first_loss"]


def test_resume_skips_finished_rounds_and_a_third_round_adds_only_itself(rga_run, data):
    out, _, _ = rga_run
    cfg = TrainConfig.from_dict(RGA_TRAIN)
    before = _hashes(out / "stages")
    messages: list[str] = []
    trainer.train(data, out, cfg, [3, 4, 5, 6], rounds=2, log=messages.append, quiet=True)
    assert _hashes(out / "stages") == before
    assert sum("finished earlier" in m for m in messages) == 8


def test_dpo_without_any_pair_over_the_margin_is_skipped_with_its_reason(rga_run, data, tmp_path):
    out, _, _ = rga_run
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    for name in ("4-dpo", "5-rg-cl", "6-calibrate", *ROUND1):
        shutil.rmtree(copy / "stages" / name)
    strict = dict(RGA_TRAIN, dpo={**TINY_TRAIN["dpo"], "min_margin": 1e9})
    run_json = json.loads((copy / "run.json").read_text())
    run_json["config"] = TrainConfig.from_dict(strict).to_dict()
    (copy / "run.json").write_text(json.dumps(run_json))
    messages: list[str] = []
    trainer.train(data, copy, TrainConfig.from_dict(strict), [4], log=messages.append, quiet=True)
    info = RunDir(copy).stage_info(4)
    assert info["pairs"] == 0 and ">= 1000000000.0/sqrt(requests)" in info["skipped"]
    assert any("skipped" in m for m in messages)
    # the policy goes on as the RG-SFT reasoner left it
    a, b = copy / "stages" / "4-dpo" / "reasoner", copy / "stages" / "3-rg-sft" / "reasoner"
    assert _hashes(a) == _hashes(b)


def test_dpo_policy_goes_on_only_if_its_held_out_accuracy_beats_chance(rga_run):
    run = RunDir(rga_run[0])
    for r in (0, 1):
        info = run.stage_info(4, r)
        if "skipped" in info:
            assert info["dpo_kept"] is False
            continue
        check = info["generalisation"]
        assert check["reward_accuracy"] == info["held_out"]["reward_accuracy"]
        assert check["pairs"] == info["held_out"]["pairs"]
        assert info["dpo_kept"] == (check["reward_accuracy"] - 0.5 > check["standard_error"])
        same = _hashes(run.stage_dir(4, r) / "reasoner") == _hashes(run.stage_dir(3, r) / "reasoner")
        assert same == (not info["dpo_kept"])  # not kept: stage 5 gets the RG-SFT reasoner itself
        assert (run.stage_dir(4, r) / "losses.csv").is_file()  # the training it did is on record either way
        assert run.stage_info(5, r)["policy_from"] == f"stages/4-dpo{'-r1' if r else ''}/reasoner"


def test_stage_4_before_stage_3_is_a_clear_error(data, tmp_path):
    cfg = TrainConfig.from_dict(TINY_TRAIN)
    with pytest.raises(TrainError, match="stage 4 needs stage 3"):
        trainer.train(data, tmp_path / "r", cfg, [4], log=lambda m: None, quiet=True)


def test_bad_rounds_and_stages_are_config_errors(data, tmp_path):
    with pytest.raises(ConfigError, match="rounds"):
        trainer.train(data, tmp_path / "r", TrainConfig.from_dict(TINY_TRAIN), [0], rounds=0)
    with pytest.raises(ConfigError, match="no stage 7"):
        trainer.parse_stages("0-7")


def test_report_writes_the_table_charts_and_loss_curves(rga_run, tmp_path):
    out, result, _ = rga_run
    res = CliRunner().invoke(app, ["report", str(out), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| QE + RGA (stage 6) |" in md and "| 6-calibrate-r1 |" in md
    gauc = f"{result['test']['qe_rga']['gauc']:.4f}"
    assert gauc in md
    for png in ("stages.png", "losses.png"):
        assert (tmp_path / "rep" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curves = sorted(p.name for p in (tmp_path / "rep" / "losses").glob("*.csv"))
    assert "1-warmup.csv" in curves
    # a DPO stage skipped for want of pairs over the margin (stage.json says why) has no curve
    run = RunDir(out)
    for label, r in (("4-dpo", 0), ("4-dpo-r1", 1)):
        if "skipped" not in run.stage_info(4, r):
            assert "reward_accuracy" in (tmp_path / "rep" / "losses" / f"{label}.csv").read_text().splitlines()[0]


def test_report_of_a_folder_without_metrics_is_one_clear_line(tmp_path):
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code != 0
    assert "no metrics.json" in str(res.exception) or "no metrics.json" in res.output
