"""In-process inference: `Pipeline.from_export` (ONNX Runtime) against `TorchPipeline.from_run`
on 100 raw requests, and its reusable pieces."""

from __future__ import annotations

import numpy as np
import pytest

from rgalign.data.encoders import FeatureEncoders
from rgalign.data.requests import build_requests
from rgalign.data.synth import tiny_dataset
from rgalign.errors import ExportError
from rgalign.export import TorchPipeline
from rgalign.inference.pipeline import Pipeline
from rgalign.inference.postprocess import Ranked, postprocess


@pytest.fixture(scope="module")
def records():
    ds = tiny_dataset()
    ra = build_requests(ds, FeatureEncoders.fit(ds), "train")
    return ra.raw[:100]


@pytest.fixture(scope="module")
def torch_pipe(fake_run):
    return TorchPipeline.from_run(fake_run)


@pytest.mark.slow
def test_onnx_fp32_top_k_equals_pytorch_on_100_requests(exported, torch_pipe, records):
    out, _ = exported
    pipe = Pipeline.from_export(out, precision="fp32", threads=1)
    got, want = pipe(records, k=3), torch_pipe(records, k=3)
    assert len(got) == len(want) == 100
    assert all(isinstance(r, Ranked) for r in got)
    assert [r.intent_ids for r in got] == [r.intent_ids for r in want]
    diff = max(abs(a - b) for g, w in zip(got, want) for a, b in zip(g.scores, w.scores))
    assert diff <= 1e-4


@pytest.mark.slow
def test_pieces_compose_to_the_call(exported, records):
    out, _ = exported
    pipe = Pipeline.from_export(out, precision="int8", threads=1)
    batch = pipe.preprocess(records[:5])
    assert batch.input_ids.dtype == np.int64 and batch.input_ids.shape[0] == 5
    assert batch.input_ids.shape[1] <= 96
    assert (batch.attention_mask[:, -1] == 1).all()  # left padded
    q = pipe.reason(batch.input_ids, batch.attention_mask)
    assert q.shape == (5, 32) and np.allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-2)
    ranked = pipe.rank(batch.cat, batch.num, q)
    assert ranked["scores"].shape == (5, 50) and ranked["topk_idx"].shape == (5, 10)
    assert pipe.postprocess(ranked, k=3) == pipe(records[:5], k=3)
    # more intents than the graph's top-K: ranked from the full scores
    long = pipe(records[:2], k=20)
    assert [len(r.intent_ids) for r in long] == [20, 20]
    assert long[0].intent_ids[:3] == pipe(records[:2], k=3)[0].intent_ids
    assert pipe([], k=3) == []


def test_postprocess_and_missing_precision(tmp_path):
    ids = ["a", "b", "c", "d"]
    scores = np.array([[0.1, 0.9, 0.5, 0.9]], np.float32)
    top_idx = np.array([[1, 3]], np.int64)
    top_scores = np.take_along_axis(scores, top_idx, axis=1)
    assert postprocess(ids, top_scores, top_idx, 1) == [Ranked(["b"], [pytest.approx(0.9)])]
    assert postprocess(ids, top_scores, top_idx, 3, scores)[0].intent_ids == ["b", "d", "c"]
    with pytest.raises(ExportError, match="not an export"):
        Pipeline.from_export(tmp_path)


@pytest.mark.slow
def test_unknown_precision_in_export(exported):
    out, manifest = exported
    import json

    m = json.loads((out / "manifest.json").read_text())
    del m["artifacts"]["ranker/int8"]
    other = out.parent / "partial"
    import shutil

    shutil.copytree(out, other)
    (other / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ExportError, match="no int8 ranker in this export"):
        Pipeline.from_export(other, precision="int8")
