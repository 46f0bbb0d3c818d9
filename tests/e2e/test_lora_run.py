"""A run with LoRA and activation checkpointing through stages 1-5 on the tiny dataset: each
reasoner stage trains adapters only and writes a merged, plain checkpoint (the same tensors and
shapes as a fully fine-tuned one, so the export's graph is the same), DPO's reference is the
policy with its adapters off, and `auto` leaves the built-in backbone's run as it was."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import safetensors.torch
from safetensors import safe_open

from fakes import E2E_DATA, TINY_TRAIN
from rgalign.artifacts.run import RunDir
from rgalign.data.synth import synthesize
from rgalign.io import read_json
from rgalign.models.reasoner import Reasoner
from rgalign.training import rga
from rgalign.training.alignment import CANDIDATES, RGA_STAGES
from rgalign.training.distributed import DistInfo
from rgalign.training import trainer
from rgalign.training.config import TrainConfig

LORA = {**TINY_TRAIN, "warmup": {"max_examples": 24, "batch_size": 8}, "reward": {"epochs": 1, "batch_size": 64},
        "rg_sft": {**TINY_TRAIN["rg_sft"], "max_requests": 24, "n_candidates": 4, "n_sampled": 2},
        "rg_cl": {**TINY_TRAIN["rg_cl"], "max_requests": 32},
        "finetune": {"lora": "on", "gradient_checkpointing": "on", "lora_rank": 4}}


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    data = synthesize(tmp_path_factory.mktemp("data") / "d", **E2E_DATA)
    out = tmp_path_factory.mktemp("runs") / "lora"
    # the stages themselves, without `train`'s evaluation of every stage at the end (what is
    # tested here is what the stages write)
    ctx = trainer.prepare(data, out, TrainConfig.from_dict(LORA), DistInfo(), lambda m: None, True)
    for i in (1, 2):
        trainer.STAGES[i](ctx)
    seen: list = []  # the candidate latents stage 3 scores its pools with, as it computed them

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    real = rga.candidate_latents
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rga, "candidate_latents", spy)
        RGA_STAGES[3](ctx, 0)
    safetensors.torch.save_file({"latents": seen[0]}, str(out.parent / "rg_sft_latents.safetensors"))
    # a reward model of this size scores every candidate alike (DPO would skip): give the pools
    # the opinions of one that does not, first candidate best, so stage 4 trains on real pairs
    pools = RunDir(out).stage_dir(3) / CANDIDATES
    shutil.copy(pools, out.parent / "rg_sft_as_scored.jsonl")  # the pools stage 3 scored
    rows = [json.loads(line) for line in pools.read_text().splitlines()]
    for r in rows:
        r["rewards"] = [1.0 - 0.1 * k for k in range(len(r["candidates"]))]
        r["user_rewards"] = [r["rewards"]] * 2  # two of the user's slates agreeing (dpo.pairs: user)
    pools.write_text("".join(json.dumps(r) + "\n" for r in rows))
    RGA_STAGES[4](ctx, 0)
    RGA_STAGES[5](ctx, 0)
    return out


def _tensors(reasoner_dir: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(reasoner_dir / "backbone" / "model.safetensors"), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def test_each_reasoner_stage_trained_adapters_and_wrote_a_plain_checkpoint(lora_run):
    run = RunDir(lora_run)
    shapes = None
    for i in (1, 3, 4, 5):
        info = run.stage_info(i)
        ft = info["finetune"]
        assert ft["lora"] and ft["gradient_checkpointing"] and not ft["bf16"]
        assert 0 < ft["trainable_parameters"] < ft["total_parameters"] / 3
        d = run.stage_dir(i) / "reasoner"
        tensors = _tensors(d)
        assert not [k for k in tensors if "lora" in k or "base_layer" in k]
        shapes = shapes or tensors
        assert tensors == shapes  # every stage: the same tensors, the same shapes
        Reasoner.load(d)  # today's loader reads it
    # the same checkpoint layout a fully fine-tuned reasoner of this config has
    loaded = Reasoner.load(run.stage_dir(1) / "reasoner")
    full = Reasoner(replace(loaded.config, backbone=None), loaded.tokenizer)
    expected = {k: tuple(v.shape) for k, v in full.backbone.state_dict().items()}
    assert {k: v for k, v in expected.items() if k in shapes} == shapes
    assert set(expected) - set(shapes) <= {"lm_head.weight"}  # tied to the embedding, saved once


def test_dpo_reference_was_the_policy_with_adapters_off_and_rg_cl_kept_no_copy(lora_run):
    run = RunDir(lora_run)
    dpo = run.stage_info(4)
    assert "skipped" not in dpo and dpo["pairs"] > 0
    assert dpo["frozen_unchanged"] == {"reference": True}  # recomputed with adapters off: unchanged
    held = dpo["held_out"]
    assert held["pairs"] > 0 and held["before"]["loss"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference
    assert held["loss"] != held["before"]["loss"]  # and after training, the adapters moved the policy
    rg_cl = run.stage_info(5)
    assert rg_cl["frozen_unchanged"] == {} and "LoRA" in rg_cl["target_encoder"]


def test_rg_sft_scored_with_the_policy_itself_as_a_copy_would(lora_run):
    """Under LoRA, stage 3's reward reasoner is the checkpoint the policy starts from: it scores
    with the policy (before its adapters go in) and keeps no second copy. The candidate latents
    it scored with are those a separate copy of that reasoner gives; the trained policy's differ."""
    run = RunDir(lora_run)
    info = run.stage_info(3)
    assert info["frozen_unchanged"] == {"reward_model": True} and "no copy" in info["reward_reasoner_source"]
    assert info["reward_reasoner"] == info["policy_from"] == "stages/1-warmup/reasoner"
    pools = [json.loads(line) for line in (lora_run.parent / "rg_sft_as_scored.jsonl").read_text().splitlines()]
    cfg = TrainConfig.from_dict(LORA)
    ctx = trainer.prepare(read_json(lora_run / "run.json")["data"]["path"], lora_run, cfg, DistInfo(), lambda m: None, True)
    prompts = [ctx.prompts("train")[p["row"]] for p in pools]
    scored = safetensors.torch.load_file(str(lora_run.parent / "rg_sft_latents.safetensors"))["latents"]

    def latents(reasoner_dir: Path):
        copy = Reasoner.load(reasoner_dir)
        return rga.candidate_latents(copy, copy.tokenizer, prompts, [p["candidates"] for p in pools])

    assert (latents(lora_run / info["reward_reasoner"]) - scored).abs().max() <= 1e-6
    assert (latents(run.stage_dir(3) / "reasoner") - scored).abs().max() > 1e-4  # the check can fail
