"""Reasoner: last-token pooling under both paddings, LM helpers, generation, checkpoints, and the
backbone errors."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import BertConfig

from rgalign.errors import ConfigError
from rgalign.models.prompt import build_prompt, build_target
from rgalign.models.reasoner import Reasoner, ReasonerConfig, build_backbone, last_token_index
from tiny import TINY_FIELDS, tiny_kb, tiny_reasoner, tiny_reasoner_config, tiny_requests, tiny_tokenizer
from rgalign.models.tokenizer import encode_pairs, encode_prompts


@pytest.fixture(scope="module")
def reasoner() -> Reasoner:
    return tiny_reasoner(seed=0)


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    # different lengths, so every batch has real padding
    reqs = tiny_requests(4, seed=1)
    return [build_prompt(r, TINY_FIELDS) for r in reqs] + ["user: tier=gold | query:"]


def _encode(tokenizer, prompts, side, max_len=96):
    tok = copy.deepcopy(tokenizer)
    tok.padding_side = side
    return encode_prompts(tok, prompts, max_len)


def test_last_token_index_for_both_paddings():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert last_token_index(right).tolist() == [2, 4, 0]
    assert last_token_index(left).tolist() == [4, 4, 4]


@pytest.mark.parametrize("side", ["left", "right"])
def test_latent_query_ignores_padding(reasoner, prompts, side):
    batch = _encode(reasoner.tokenizer, prompts, side)
    assert (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        z = reasoner(batch["input_ids"], batch["attention_mask"])
        assert z.shape == (len(prompts), reasoner.config.d_query)
        torch.testing.assert_close(z.norm(dim=-1), torch.ones(len(prompts)))
        for i, p in enumerate(prompts):
            alone = _encode(reasoner.tokenizer, [p], side)
            assert alone["attention_mask"].all()
            z1 = reasoner(alone["input_ids"], alone["attention_mask"])
            assert (z[i] - z1[0]).abs().max() < 1e-5
        # pooled == the hidden state at the known last real position
        h = reasoner.hidden_states(batch["input_ids"], batch["attention_mask"])
        pooled = reasoner.pooled(batch["input_ids"], batch["attention_mask"])
        for i in range(len(prompts)):
            n = int(batch["attention_mask"][i].sum())
            last = batch["input_ids"].shape[1] - 1 if side == "left" else n - 1
            torch.testing.assert_close(pooled[i], h[i, last])


def test_encode_texts_matches_pooled_and_batching(reasoner):
    _, texts = tiny_kb(50)
    a = reasoner.encode_texts(texts, batch_size=64)
    b = reasoner.encode_texts(texts, batch_size=7)
    assert a.shape == (50, reasoner.hidden_size)
    assert (a - b).abs().max() < 1e-5
    q = reasoner.encode_prompts(texts[:3])
    assert q.shape == (3, reasoner.config.d_query)


def test_lm_loss_and_sequence_logprobs_agree(reasoner, prompts):
    targets = [build_target(["Where is my parcel"])] * len(prompts)
    batch = encode_pairs(reasoner.tokenizer, prompts, targets, reasoner.config.max_len)
    n_label = int((batch["labels"][:, 1:] != -100).sum())
    with torch.no_grad():
        loss = reasoner.lm_loss(**batch)
        logp = reasoner.sequence_logprobs(**batch)
    assert logp.shape == (len(prompts),) and (logp < 0).all()
    torch.testing.assert_close(-logp.sum() / n_label, loss, rtol=1e-4, atol=1e-5)


def test_sft_step_reduces_loss():
    r = tiny_reasoner(seed=5).train()
    batch = encode_pairs(r.tokenizer, ["user: tier=gold | query:"] * 4, [" Where is my parcel"] * 4, 64)
    opt = torch.optim.AdamW(r.parameters(), lr=3e-3)
    first = None
    for _ in range(5):
        loss = r.lm_loss(**batch)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_generate_query_returns_n_strings_per_prompt(reasoner, prompts):
    side = reasoner.tokenizer.padding_side
    out = reasoner.generate_query(prompts[:2], n=3, temperature=1.0, top_p=0.9, max_new_tokens=4, seed=0)
    assert len(out) == 2 and all(len(q) == 3 and all(isinstance(s, str) for s in q) for q in out)
    assert reasoner.generate_query(prompts[:2], n=3, max_new_tokens=4, seed=0) == reasoner.generate_query(
        prompts[:2], n=3, max_new_tokens=4, seed=0
    )
    assert reasoner.tokenizer.padding_side == side


def test_generate_query_with_a_tiny_nucleus_is_greedy_decoding(reasoner, prompts):
    """top_p -> 0 keeps only the most likely token: the shared-prefill sampler must then give
    exactly Hugging Face's greedy ``generate`` (cache, positions and padding all agree)."""
    from rgalign.models.tokenizer import encode_prompts

    mixed = [prompts[0], prompts[1][: len(prompts[1]) // 2]]  # different lengths: left padding matters
    ours = reasoner.generate_query(mixed, n=2, top_p=1e-9, max_new_tokens=6, seed=0)
    side = reasoner.tokenizer.padding_side
    reasoner.tokenizer.padding_side = "left"
    try:
        batch = encode_prompts(reasoner.tokenizer, mixed, reasoner.config.max_len)
    finally:
        reasoner.tokenizer.padding_side = side
    ref = reasoner.backbone.generate(**batch, do_sample=False, max_new_tokens=6,
                                     pad_token_id=reasoner.tokenizer.pad_token_id,
                                     eos_token_id=reasoner.tokenizer.eos_token_id)
    texts = reasoner.tokenizer.batch_decode(ref[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert ours == [[t.strip()] * 2 for t in texts]


def test_generate_query_samples_differ_across_the_n_of_a_prompt(reasoner, prompts):
    out = reasoner.generate_query(prompts[:1], n=6, temperature=1.5, top_p=1.0, max_new_tokens=6, seed=1)
    assert len(set(out[0])) > 1


def test_seeded_init_is_reproducible():
    a, b = tiny_reasoner(seed=3), tiny_reasoner(seed=3)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert not torch.equal(a.proj.weight, tiny_reasoner(seed=4).proj.weight)


def test_save_load_round_trip(tmp_path, reasoner, prompts):
    reasoner.save(tmp_path / "r")
    assert {p.name for p in (tmp_path / "r").iterdir()} == {"reasoner.json", "head.safetensors", "backbone"}
    assert not list((tmp_path / "r").rglob("*.bin")) and not list((tmp_path / "r").rglob("*.pt"))
    again = Reasoner.load(tmp_path / "r")
    assert again.config == reasoner.config
    for side in ("left", "right"):
        batch = _encode(reasoner.tokenizer, prompts, side)
        with torch.no_grad():
            assert torch.equal(reasoner(**batch), again(**batch))
    assert again.tokenizer.get_vocab() == reasoner.tokenizer.get_vocab()
    # the saved backbone folder is a backbone of its own
    cfg = tiny_reasoner_config(backbone=str(tmp_path / "r" / "backbone"))
    other = Reasoner(cfg, again.tokenizer)
    for k, v in other.backbone.state_dict().items():
        assert torch.equal(v, reasoner.backbone.state_dict()[k])


def _one_line_config_error(cfg) -> str:
    with pytest.raises(ConfigError) as info:
        build_backbone(cfg, tiny_tokenizer())
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_backbone_folder_is_a_config_error(tmp_path):
    message = _one_line_config_error(ReasonerConfig(backbone=str(tmp_path / "nowhere")))
    assert "does not exist" in message
    (tmp_path / "empty").mkdir()
    assert "config.json" in _one_line_config_error(ReasonerConfig(backbone=str(tmp_path / "empty")))


def test_non_causal_backbone_is_a_config_error(tmp_path):
    BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=64).save_pretrained(tmp_path / "bert")
    message = _one_line_config_error(ReasonerConfig(backbone=str(tmp_path / "bert")))
    assert "not a causal LM" in message and "bert" in message
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    assert "cannot load backbone" in _one_line_config_error(ReasonerConfig(backbone=str(tmp_path / "broken")))
