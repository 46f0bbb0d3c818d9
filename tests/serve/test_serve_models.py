"""The python-backend models' logic, without a server: each step against the in-process
`Pipeline` on the real export, and the request-level checks that become INVALID_ARG errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rgalign.inference.pipeline import Pipeline
from rgalign.inference.runtime import OrtRunner
from rgalign.serve.client import encode_records, split_url
from rgalign.serve.models.common import RequestError, left_pad, split_rows
from rgalign.serve.models.postprocess import PostprocessStep
from rgalign.serve.models.preprocess import PreprocessStep, decode_features
from rgalign.serve.models.ranker import RankerStep
from rgalign.serve.models.reasoner import ReasonerStep
from rgalign.errors import ServeError


@pytest.fixture(scope="module")
def pipe(serve_export):
    return Pipeline.from_export(serve_export, "fp32", threads=1)


@pytest.fixture(scope="module")
def steps(serve_repo):
    pre = PreprocessStep.from_dir(serve_repo / "preprocess" / "1")
    reasoner = ReasonerStep(
        OrtRunner.load(serve_repo / "reasoner" / "1" / "model.onnx", threads=1),
        pad_token_id=pre.preprocessor.tokenizer.pad_token_id,
    )
    ranker = RankerStep(OrtRunner.load(serve_repo / "ranker" / "1" / "model.onnx", threads=1))
    post = PostprocessStep.from_dir(serve_repo / "postprocess" / "1", default_k=10)
    return pre, reasoner, ranker, post


def features(records) -> np.ndarray:
    return encode_records(records)  # what the client sends: BYTES (B, 1)


def test_steps_chained_equal_the_pipeline(steps, pipe, serve_records):
    """Three requests of different sizes (so different prompt lengths) batched together through
    reasoner and ranker, as Triton's dynamic batcher hands them over, equal the pipeline."""
    pre, reasoner, ranker, post = steps
    requests = [serve_records[:1], serve_records[1:6], serve_records[6:9]]
    tensors = [pre(features(r)) for r in requests]
    for r, t in zip(requests, tensors):
        b = pipe.preprocess(r)
        np.testing.assert_array_equal(t["input_ids"], b.input_ids)
        np.testing.assert_array_equal(t["cat"], b.cat)
        np.testing.assert_array_equal(t["num"], b.num)
    queries = reasoner([(t["input_ids"], t["attention_mask"]) for t in tensors])
    ranked = ranker([(t["cat"], t["num"], q["latent_query"]) for t, q in zip(tensors, queries)])
    for r, out in zip(requests, ranked):
        answer = post(out["topk_scores"], out["topk_idx"], out["scores"], k=3)
        want = pipe(r, k=3)
        assert [[i.decode() for i in row] for row in answer["intent_ids"]] == [w.intent_ids for w in want]
        np.testing.assert_allclose(answer["scores"], [w.scores for w in want], atol=1e-4)
        assert answer["intent_ids"].shape == answer["scores"].shape == (len(r), 3)


def test_decode_features_errors():
    assert decode_features(np.array([[b'{"a": 1}']], dtype=object)) == [{"a": 1}]
    with pytest.raises(RequestError, match=r"features\[1\]: malformed JSON"):
        decode_features(np.array([[b"{}"], [b"{oops"]], dtype=object))
    with pytest.raises(RequestError, match=r"features\[0\]: expected a JSON object .* got list"):
        decode_features(np.array([[b"[1, 2]"]], dtype=object))
    with pytest.raises(RequestError, match="not UTF-8"):
        decode_features(np.array([[b"\xff\xfe"]], dtype=object))
    with pytest.raises(RequestError, match="empty batch"):
        decode_features(np.zeros((0, 1), dtype=object))


def test_preprocess_refuses_bad_features_but_not_unseen_values(steps, serve_records):
    pre = steps[0]
    good = dict(serve_records[0])
    missing = {k: v for k, v in good.items() if k != "age"}
    with pytest.raises(RequestError, match="age"):
        pre(features([missing]))
    with pytest.raises(RequestError, match=r"feature 'age' must be a number, got str"):
        pre(features([{**good, "age": "31"}]))
    with pytest.raises(RequestError, match="recent_actions"):
        pre(features([{**good, "recent_actions": 3}]))
    unseen = pre(features([{**good, "tier": "never-seen-tier"}]))
    tier = pre.preprocessor.encoders.categorical_fields.index("tier")
    assert unseen["cat"][0, tier] == 0  # the out-of-vocabulary bucket


def test_postprocess_k(steps):
    post = steps[3]
    assert post.read_k(None) == 10 and post.read_k(np.zeros((0, 1), np.int32)) == 10
    assert post.read_k(np.array([[3], [3]], np.int32)) == 3
    assert post.read_k(np.array([[50]], np.int32)) == 50
    for bad, message in (([[0]], r"1\.\.50"), ([[51]], r"1\.\.50"), ([[3], [4]], "same for every item")):
        with pytest.raises(RequestError, match=message):
            post.read_k(np.array(bad, np.int32))
    scores = np.linspace(1, 0, 50, dtype=np.float32)[None, ::-1].copy()  # best is the last intent
    idx = np.argsort(-scores, axis=1)[:, :10]
    out = post(np.take_along_axis(scores, idx, 1), idx, scores, k=12)  # k > the graph's K
    assert out["intent_ids"][0, 0].decode() == post.intent_ids[49]
    assert out["scores"].shape == (1, 12) and (np.diff(out["scores"][0]) <= 0).all()


def test_left_pad_and_split_rows():
    a = np.array([[1, 2, 3]])
    b = np.array([[4], [5]])
    np.testing.assert_array_equal(left_pad([a, b], 0), [[1, 2, 3], [0, 0, 4], [0, 0, 5]])
    parts = split_rows(np.arange(6).reshape(3, 2), [1, 2])
    assert [p.shape for p in parts] == [(1, 2), (2, 2)]


def test_client_url_and_encoding():
    assert split_url("127.0.0.1:8000") == ("127.0.0.1:8000", "http")
    assert split_url("grpc://localhost:8001/") == ("localhost:8001", "grpc")
    assert split_url("localhost:8001", "grpc") == ("localhost:8001", "grpc")
    with pytest.raises(ServeError, match="says http"):
        split_url("http://h:1", "grpc")
    with pytest.raises(ServeError, match="unknown scheme"):
        split_url("ftp://h:1")
    enc = encode_records([{"a": "é"}, '{"raw": 1}', b"{oops"])
    assert enc.shape == (3, 1) and json.loads(enc[0, 0]) == {"a": "é"} and enc[2, 0] == b"{oops"
