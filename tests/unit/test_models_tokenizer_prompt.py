"""Tokenizer (offline BPE) and prompt serialisation."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from rgalign.errors import DataError
from rgalign.models.prompt import PromptFields, build_prompt, build_target, format_number
from tiny import TINY_FIELDS, tiny_kb, tiny_requests, tiny_tokenizer
from rgalign.models.tokenizer import IGNORE_INDEX, encode_pairs, encode_prompts, load_tokenizer, train_tokenizer

CORPUS = [build_prompt(r, TINY_FIELDS) for r in tiny_requests(200, seed=3)] + tiny_kb(50)[1]


def test_tokenizer_is_deterministic_and_round_trips_text():
    a = train_tokenizer(CORPUS, vocab_size=400)
    b = train_tokenizer(CORPUS, vocab_size=400)
    assert a.get_vocab() == b.get_vocab()
    assert json.loads(a.backend_tokenizer.to_str())["model"]["merges"] == json.loads(
        b.backend_tokenizer.to_str()
    )["model"]["merges"]
    for text in CORPUS[:5] + ["never seen: Ünïcode 😀 and 3.14", ""]:
        ids = a(text)["input_ids"]
        assert ids[0] == a.bos_token_id  # <bos> prepended, no <eos>
        assert a.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_keeps_each_feature_key_with_its_separator_in_one_token():
    tok = train_tokenizer(CORPUS, vocab_size=400)
    pieces = tok.tokenize(CORPUS[0])
    # "; days_since_last_order=" is one token, not one per `;`, `_` and `=` piece (Ġ is the space)
    for key in ("Ġ|Ġcontext:", "Ġentry_page=", ";Ġdays_since_last_order=", "Ġ|Ġquery:"):
        assert key in pieces, (key, pieces)
    assert pieces[-1] == "Ġ|Ġquery:"  # where the latent query is pooled
    # text outside `key=` fields splits into words and punctuation as GPT-2's byte-level split does
    split = tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str("Where's my parcel? It is late; x = 1")
    assert [p for p, _ in split] == ["Where", "'s", "Ġmy", "Ġparcel", "?", "ĠIt", "Ġis", "Ġlate", ";", "Ġx",
                                     "Ġ=", "Ġ1"]


def test_tokenizer_special_tokens_and_save_load(tmp_path):
    tok = train_tokenizer(CORPUS, vocab_size=400, padding_side="right")
    assert [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]
    tok.save_pretrained(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    assert again.padding_side == "right"
    assert again.get_vocab() == tok.get_vocab()
    assert again(CORPUS[:3])["input_ids"] == tok(CORPUS[:3])["input_ids"]
    assert load_tokenizer(tmp_path / "tok", padding_side="left").padding_side == "left"


@pytest.mark.parametrize("side", ["left", "right"])
def test_encode_prompts_pads_on_the_configured_side(side):
    tok = train_tokenizer(CORPUS, vocab_size=400, padding_side=side)
    batch = encode_prompts(tok, ["user: tier=gold | query:", CORPUS[0]], max_len=128)
    mask = batch["attention_mask"]
    assert mask[1].all()
    assert (mask[0, 0] == 1) == (side == "right") and (mask[0, -1] == 1) == (side == "left")
    long = encode_prompts(tok, [CORPUS[0]], max_len=8)["input_ids"][0].tolist()
    # truncation keeps <bos> and the end of the prompt, where "query:" is
    assert long == [tok.bos_token_id] + tok(CORPUS[0])["input_ids"][-7:]


@pytest.mark.parametrize("side", ["left", "right"])
def test_encode_pairs_labels_only_the_target(side):
    tok = train_tokenizer(CORPUS, vocab_size=400, padding_side=side)
    prompts = ["user: tier=gold | query:", CORPUS[1]]
    targets = [build_target(["Where is my parcel"]), build_target(["Refund status", "Track my order"])]
    b = encode_pairs(tok, prompts, targets, max_len=128)
    for i in range(2):
        real = b["input_ids"][i][b["attention_mask"][i] == 1].tolist()
        assert real == tok(prompts[i] + targets[i])["input_ids"] + [tok.eos_token_id]
        labelled = b["labels"][i][b["labels"][i] != IGNORE_INDEX].tolist()
        assert tok.decode(labelled, skip_special_tokens=True) == targets[i]
        assert labelled[-1] == tok.eos_token_id
    assert (b["labels"][b["attention_mask"] == 0] == IGNORE_INDEX).all()


def test_prompt_format_is_fixed_and_documented():
    features = {
        "region": "SG", "tier": "gold", "age": 31.0, "entry_page": "order_detail",
        "days_since_last_order": 6.25, "recent_actions": "checked tracking twice; opened chat",
        "user_id": "u1",  # extra keys are ignored
    }
    assert build_prompt(features, TINY_FIELDS) == (
        "user: tier=gold; region=SG; age=31 | context: entry_page=order_detail; "
        "days_since_last_order=6.2 | recent_actions: checked tracking twice; opened chat | query:"
    )
    assert build_prompt({**features, "age": None, "region": float("nan")}, TINY_FIELDS).startswith(
        "user: tier=gold; region=?; age=? |"
    )


@pytest.mark.parametrize(
    "value, text",
    [(31, "31"), (31.0, "31"), (6.25, "6.2"), (1.96, "2"), (-3.55, "-3.5"), (1234.56, "1235"),
     (0.1234, "0.12"), (0.0012, "0.0012"), (0.00001, "0"), (0, "0"), ("42", "42"), (True, "1")],
)
def test_format_number(value, text):
    assert format_number(value) == text


def test_prompt_errors_name_the_field():
    with pytest.raises(DataError, match="'age'"):
        build_prompt({"tier": "gold", "region": "SG"}, TINY_FIELDS)
    bad = {**tiny_requests(1)[0], "days_since_last_order": "soon"}
    with pytest.raises(DataError, match="days_since_last_order"):
        build_prompt(bad, TINY_FIELDS)
    with pytest.raises(DataError, match="twice"):
        PromptFields(user_categorical=("a",), context_categorical=("a",))


def test_prompt_fields_from_a_schema_like_object():
    schema = SimpleNamespace(
        user_categorical=("tier", "region"), user_numeric=("age",), user_text=(),
        context_categorical=("entry_page",), context_numeric=("days_since_last_order",),
        context_text=("recent_actions",), categorical=("ignored",),
    )
    fields = PromptFields.from_schema(schema)
    assert fields == TINY_FIELDS
    assert PromptFields.from_dict(fields.to_dict()) == fields


def test_build_target():
    assert build_target(["Where is my parcel?"]) == " Where is my parcel?"
    assert build_target([" a ", "b"]) == " a ; b"
    with pytest.raises(DataError):
        build_target([])


def test_tiny_prompt_token_length_is_in_budget():
    tok = tiny_tokenizer()
    lengths = [len(tok(build_prompt(r, TINY_FIELDS))["input_ids"]) for r in tiny_requests(50, seed=9)]
    assert max(lengths) < 96  # the tiny reasoner's max_len: nothing truncated
