"""LoRA, activation checkpointing and bf16 autocast on the tiny reasoner: adapters train and the
backbone does not, merging gives the adapter model's outputs in a plain checkpoint that today's
loader reads, the DPO reference with adapters off is the starting model, and `auto` leaves the
built-in backbone fully fine-tuned."""

from __future__ import annotations

import math

import pytest
import torch

from rgalign.config import from_dict
from rgalign.errors import ConfigError
from rgalign.models.prompt import build_prompt
from rgalign.models.reasoner import Reasoner
from rgalign.models.tokenizer import encode_pairs, encode_prompts
from rgalign.training import finetune, loops, rga
from rgalign.training.config import FinetuneConfig, TrainConfig
from rgalign.training.distributed import DistInfo
from tiny import TINY_FIELDS, tiny_reasoner, tiny_requests

CPU = torch.device("cpu")
LORA = FinetuneConfig(lora="on", lora_dropout=0.0)


def _data(n: int = 8):
    prompts = [build_prompt(r, TINY_FIELDS) for r in tiny_requests(n, seed=1)]
    targets = [" where is my parcel", " refund status", " payment failed", " reset my password"] * (n // 4 + 1)
    return prompts, targets[:n]


def _tuned(cfg: FinetuneConfig = LORA, steps_epochs: int = 3) -> tuple[Reasoner, finetune.Tuning]:
    torch.manual_seed(0)
    reasoner = tiny_reasoner()
    tuning = finetune.Tuning(reasoner, cfg, finetune.finetune_plan(cfg, loaded_backbone=False, device=CPU))
    prompts, targets = _data()
    loops.train_sft(reasoner, reasoner.tokenizer, prompts, targets, epochs=steps_epochs, batch_size=4, lr=1e-2,
                    max_len=96, seed=0, dist=DistInfo(), quiet=True, autocast=tuning.autocast)
    return reasoner, tuning


def _latents(reasoner: Reasoner) -> torch.Tensor:
    prompts, _ = _data()
    enc = encode_prompts(reasoner.tokenizer, prompts, 96)
    with torch.no_grad():
        return reasoner.eval()(enc["input_ids"], enc["attention_mask"])


def _logprobs(reasoner: Reasoner) -> torch.Tensor:
    prompts, targets = _data()
    return rga.batched_sequence_logprobs(reasoner, reasoner.tokenizer, prompts, targets)


def test_auto_is_lora_and_checkpointing_for_a_loaded_backbone_and_full_for_the_built_in():
    auto = FinetuneConfig()
    built_in = finetune.finetune_plan(auto, loaded_backbone=False, device=CPU)
    loaded = finetune.finetune_plan(auto, loaded_backbone=True, device=CPU)
    assert built_in == finetune.FinetunePlan(lora=False, gradient_checkpointing=False, bf16=False)
    assert loaded == finetune.FinetunePlan(lora=True, gradient_checkpointing=True, bf16=False)  # no bf16 on CPU
    off = finetune.finetune_plan(FinetuneConfig(lora="off", gradient_checkpointing="off"), loaded_backbone=True,
                                 device=CPU)
    assert not off.lora and not off.gradient_checkpointing
    cfg = TrainConfig().with_backbone("/x").with_lora("off")
    assert cfg.finetune.lora == "off" and cfg.reasoner.backbone == "/x"


def test_only_the_adapters_and_the_head_train_and_the_backbone_stays():
    torch.manual_seed(0)
    start = tiny_reasoner().backbone.state_dict()
    reasoner, tuning = _tuned()
    assert 0 < tuning.trainable_parameters < tuning.total_parameters / 2
    moved = [n for n, p in reasoner.backbone.named_parameters() if "lora_B" in n and p.abs().sum() > 0]
    assert moved  # lora_B starts at zero: non-zero means the adapters trained
    for name, value in reasoner.backbone.state_dict().items():
        if "lora_" not in name:
            assert torch.equal(value, start[name.replace(".base_layer", "")]), name


def test_merge_gives_the_adapter_models_outputs_in_a_plain_checkpoint(tmp_path):
    reasoner, tuning = _tuned()
    with_adapters, logp_adapters = _latents(reasoner), _logprobs(reasoner)
    tuning.merge()
    assert not [n for n, _ in reasoner.named_modules() if "lora" in n]
    assert torch.allclose(_latents(reasoner), with_adapters, atol=1e-5)
    assert torch.allclose(_logprobs(reasoner), logp_adapters, atol=1e-3)  # sums over ~6 tokens of log-probs
    # the same modules, names and shapes as a reasoner that never saw LoRA: the same exported graph
    plain = tiny_reasoner().state_dict()
    merged = reasoner.state_dict()
    assert {k: v.shape for k, v in merged.items()} == {k: v.shape for k, v in plain.items()}
    reasoner.save(tmp_path / "r")
    config = (tmp_path / "r" / "backbone" / "config.json").read_text()
    assert "lora" not in config and "peft" not in config
    loaded = Reasoner.load(tmp_path / "r")
    assert torch.equal(_latents(loaded), _latents(reasoner))
    assert all(p.requires_grad for p in reasoner.parameters())


def test_the_dpo_reference_with_adapters_off_is_the_starting_model():
    reasoner, tuning = _tuned()
    torch.manual_seed(0)
    base = _logprobs(tiny_reasoner())
    trained = _logprobs(reasoner)
    assert (trained - base).abs().max() > 1e-2  # the adapters moved the policy
    with tuning.base_model() as reference:
        assert torch.equal(_logprobs(reference), base)  # bit for bit: the base weights are untouched
    assert torch.equal(_logprobs(reasoner), trained)  # and the adapters are back on after


def test_base_model_needs_lora():
    reasoner = tiny_reasoner()
    cfg = FinetuneConfig(lora="off")
    tuning = finetune.Tuning(reasoner, cfg, finetune.finetune_plan(cfg, loaded_backbone=False, device=CPU))
    with pytest.raises(RuntimeError, match="LoRA"):
        with tuning.base_model():
            pass


def test_checkpointing_gives_the_same_gradients_and_merge_turns_it_off():
    prompts, targets = _data(4)
    grads = []
    for on in ("off", "on"):
        torch.manual_seed(0)
        reasoner = tiny_reasoner().train()
        cfg = FinetuneConfig(lora="off", gradient_checkpointing=on)
        tuning = finetune.Tuning(reasoner, cfg, finetune.finetune_plan(cfg, loaded_backbone=False, device=CPU))
        assert reasoner.backbone.is_activation_checkpointing == (on == "on")
        enc = encode_pairs(reasoner.tokenizer, prompts, targets, 96)
        reasoner.lm_loss(enc["input_ids"], enc["attention_mask"], enc["labels"]).backward()
        grads.append(reasoner.backbone.model.layers[0].mlp.up_proj.weight.grad.clone())
        tuning.merge()
        assert not reasoner.backbone.is_activation_checkpointing
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_lora_with_checkpointing_and_bf16_autocast_trains_on_cpu_when_asked():
    cfg = FinetuneConfig(lora="on", gradient_checkpointing="on", bf16="on", lora_dropout=0.0)
    reasoner, tuning = _tuned(cfg, steps_epochs=1)
    assert tuning.plan.bf16 and tuning.plan.gradient_checkpointing
    with tuning.autocast():
        assert torch.is_autocast_enabled("cpu")
    assert any(p.abs().sum() > 0 for n, p in reasoner.named_parameters() if "lora_B" in n)
    tuning.merge()
    assert all(math.isfinite(float(x)) for x in _latents(reasoner).flatten())
    assert next(reasoner.parameters()).dtype == torch.float32  # autocast never casts the weights


def test_bad_lora_settings_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="lora"):
        from_dict(FinetuneConfig, {"lora": "yes"})
    with pytest.raises(ConfigError, match="lora_rank"):
        from_dict(FinetuneConfig, {"lora_rank": 0})
    with pytest.raises(ConfigError, match="--lora"):
        TrainConfig().with_lora("maybe")
    reasoner = tiny_reasoner()
    cfg = FinetuneConfig(lora="on", lora_targets=("no_such_proj",))
    with pytest.raises(ConfigError, match="lora_targets") as e:
        finetune.Tuning(reasoner, cfg, finetune.finetune_plan(cfg, loaded_backbone=False, device=CPU))
    assert "\n" not in str(e.value)
