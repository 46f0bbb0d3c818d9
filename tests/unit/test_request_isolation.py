"""Request limits, per-request error isolation and batch invariance, without a server."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rgalign.errors import ConfigError, RequestError
from rgalign.inference.batch_invariance import RowwiseRunner, batch_dependent_ops
from rgalign.inference.limits import MAX_JSON_DEPTH, RequestLimits, check_record, decode_item, one_line
from rgalign.serve.models.common import answer_each
from rgalign.serve.models.postprocess import PostprocessStep
from rgalign.serve.models.ranker import check_features
from rgalign.serve.models.reasoner import check_tokens

LIMITS = RequestLimits(max_item_bytes=8192, max_text_chars=100)


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"x" * 9000, "over the limit of 8,192"),
        (b"\xff", "not UTF-8"),
        (b"{oops", "malformed JSON"),
        (b"[1]", "expected a JSON object"),
        (b"[" * 100 + b"]" * 100, f"nested deeper than {MAX_JSON_DEPTH}"),
        (b'{"a": ' + b"9" * 4400 + b"}", "unreadable JSON"),
    ],
)
def test_decode_item_refuses_before_parsing(raw, words):
    with pytest.raises(RequestError, match=words):
        decode_item(raw, 3, LIMITS)


def test_decode_item_ignores_brackets_inside_strings():
    text = json.dumps({"t": "[" * 100})
    assert decode_item(text.encode(), 0, LIMITS) == {"t": "[" * 100}


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("y" * 101, "101 characters, over the limit of 100"),
        (10**400, "out of the int64 range"),
        (float("inf"), "must be finite"),
        ({"a": 1}, "must be a string or a number \\(or null\\), got dict"),
        ([1], "got list"),
    ],
)
def test_check_record_refuses_values_the_prompt_cannot_take(value, words):
    with pytest.raises(RequestError, match=words):
        check_record({"tier": value}, 0, ["tier"], LIMITS, categorical=["tier"])


def test_check_record_accepts_ordinary_values_and_ignores_undeclared_keys():
    check_record({"tier": "gold", "age": 31.5, "x": None, "extra": {"deep": [1]}}, 0, ["tier", "age", "x"], LIMITS)


def test_limits_are_validated_and_round_trip():
    with pytest.raises(ConfigError):
        RequestLimits(max_item_bytes=1)
    assert RequestLimits.from_dict({"max_item_bytes": "2048", "max_text_chars": "", "other": "1"}) == RequestLimits(
        max_item_bytes=2048
    )


def test_one_line_is_one_bounded_line():
    assert one_line(ValueError("a\nb")) == "ValueError: a"
    assert len(one_line(ValueError("x" * 1000))) == 200


def test_answer_each_isolates_read_and_run_failures():
    def read(r):
        if r == "overflow":
            raise OverflowError("cannot convert float infinity to integer")
        if r == "bad":
            raise RequestError("features[0]: bad")
        return r

    calls = []

    def run(items):
        calls.append(list(items))
        if "poison" in items:
            raise RuntimeError("ORT: index out of range\nstack ...")
        return [{"y": np.array([len(i)])} for i in items]

    answers = answer_each(["ok", "overflow", "bad", "poison", "fine"], read, run, model="m")
    assert answers[0]["y"][0] == 2 and answers[4]["y"][0] == 4
    assert answers[1] == ("INVALID_ARG", "m: cannot read this request (OverflowError: cannot convert float infinity to integer)")
    assert answers[2] == ("INVALID_ARG", "features[0]: bad")
    assert answers[3] == ("INTERNAL", "m: cannot run this request (RuntimeError: ORT: index out of range)")
    assert calls[0] == ["ok", "poison", "fine"]  # one batched call first, then each alone
    assert calls[1:] == [["ok"], ["poison"], ["fine"]]


def test_step_checks_refuse_what_would_crash_the_graph():
    with pytest.raises(RequestError, match="token ids must be in 0..511"):
        check_tokens(np.array([[1, 600]]), np.array([[1, 1]]), vocab_size=512, max_len=96)
    with pytest.raises(RequestError, match="100 tokens, over the model's limit of 96"):
        check_tokens(np.ones((1, 100), np.int64), np.ones((1, 100), np.int64), vocab_size=512, max_len=96)
    with pytest.raises(RequestError, match="last token attended"):
        check_tokens(np.ones((1, 3), np.int64), np.array([[1, 1, 0]]), vocab_size=512, max_len=96)
    with pytest.raises(RequestError, match="required"):
        check_tokens(None, None)
    ids, mask = check_tokens(np.array([[0, 5]]), np.array([[0, 1]]), 512, 96)
    assert ids.dtype == np.int64
    with pytest.raises(RequestError, match="cat field 1 must be in 0..2"):
        check_features(np.array([[0, 3]]), np.zeros((1, 1)), np.zeros((1, 4)), cardinalities=(5, 3), d_query=4)
    with pytest.raises(RequestError, match="finite"):
        check_features(np.array([[0, 1]]), np.array([[np.nan]]), np.zeros((1, 4)), cardinalities=(5, 3), d_query=4)
    step = PostprocessStep([f"i{j}" for j in range(5)], default_k=2)
    with pytest.raises(RequestError, match="topk_idx must be in 0..4"):
        step.check(np.zeros((1, 2), np.float32), np.array([[0, 7]]), np.zeros((1, 5), np.float32))


def test_rowwise_runner_trims_each_rows_left_padding():
    seen = []

    def runner(feeds):
        seen.append({k: v.copy() for k, v in feeds.items()})
        return {"out": feeds["input_ids"].sum(axis=1, keepdims=True).astype(np.float32)}

    ids = np.array([[0, 0, 7, 8], [1, 2, 3, 4]])
    mask = np.array([[0, 0, 1, 1], [1, 1, 1, 1]])
    out = RowwiseRunner(runner)({"input_ids": ids, "attention_mask": mask})
    np.testing.assert_array_equal(out["out"], [[15], [10]])
    assert seen[0]["input_ids"].tolist() == [[7, 8]] and seen[0]["attention_mask"].tolist() == [[1, 1]]
    assert seen[1]["input_ids"].shape == (1, 4)


def test_int8_pipeline_answers_do_not_depend_on_batch_mates(tiny_int8_export):
    """In process: 32 requests alone and in batches of 16 (left padding, strangers' activations)
    give bit-identical int8 answers; fp32 graphs are not row-wise (no dynamic quantization)."""
    from rgalign.data.encoders import FeatureEncoders
    from rgalign.data.requests import build_requests
    from rgalign.data.synth import tiny_dataset
    from rgalign.inference.pipeline import Pipeline

    assert batch_dependent_ops(tiny_int8_export / "reasoner" / "int8" / "model.onnx") == ["DynamicQuantizeLinear"]
    assert batch_dependent_ops(tiny_int8_export / "reasoner" / "fp32" / "model.onnx") == []
    ds = tiny_dataset()
    records = build_requests(ds, FeatureEncoders.fit(ds), "train").raw[:32]
    pipe = Pipeline.from_export(tiny_int8_export, "int8", threads=1)
    assert isinstance(pipe.reasoner, RowwiseRunner) and isinstance(pipe.ranker, RowwiseRunner)
    alone = [pipe([r], k=5)[0] for r in records]
    batched = pipe(records[:16], k=5) + pipe(records[16:], k=5)
    assert [a.intent_ids for a in alone] == [b.intent_ids for b in batched]
    assert [a.scores for a in alone] == [b.scores for b in batched]
