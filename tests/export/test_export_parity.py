"""fp32 parity of the exported graphs with PyTorch over padded batches of several shapes, and the
gate machinery itself (names, shapes, values; every failure collected)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rgalign.export.reference import TorchRunner

from rgalign.inference.runtime import OrtRunner, check_providers
from rgalign.export.specs import graph_module, left_padded, ranker_spec, reasoner_spec
from rgalign.export.source import load_run
from rgalign.export.validate import GateFailed, raise_if_failed, validate
from rgalign.errors import ExportError


@pytest.fixture(scope="module")
def source(fake_run):
    return load_run(fake_run)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_reasoner_parity_on_padded_shapes(exported, source, precision):
    out, _ = exported
    spec = reasoner_spec(source.reasoner)
    ref = TorchRunner(graph_module(spec, source.reasoner), spec.input_names, spec.output_names)
    art = OrtRunner.load(out / "reasoner" / precision / "model.onnx", threads=1)
    rng = np.random.default_rng(123)
    tok = source.reasoner.tokenizer
    vocab = len(tok)
    # left padding, random lengths; the last shape is the longest prompt the graph accepts
    shapes = ((1, 16), (3, 40), (8, 64), (2, 96))
    feeds = [left_padded(rng, b, t, vocab, tok.bos_token_id, tok.pad_token_id) for b, t in shapes]
    report = validate(art, ref, spec, precision, feeds)
    assert report.passed, report.failures()
    if precision == "fp32":
        for feed in feeds:
            diff = np.abs(art(feed)["latent_query"] - ref(feed)["latent_query"]).max()
            assert diff <= 1e-4


@pytest.mark.slow
def test_left_padding_does_not_change_the_latent_query(exported, source):
    out, _ = exported
    art = OrtRunner.load(out / "reasoner" / "fp32" / "model.onnx", threads=1)
    tok = source.reasoner.tokenizer
    ids = np.array([[tok.bos_token_id, 40, 41, 42, 43, 44]], dtype=np.int64)
    alone = art({"input_ids": ids, "attention_mask": np.ones_like(ids)})["latent_query"]
    padded_ids = np.concatenate([np.full((1, 10), tok.pad_token_id, np.int64), ids], axis=1)
    mask = (np.arange(16) >= 10).astype(np.int64)[None]
    padded = art({"input_ids": padded_ids, "attention_mask": mask})["latent_query"]
    assert np.abs(alone - padded).max() <= 1e-5


@pytest.mark.slow
def test_ranker_parity_and_topk(exported, source):
    out, _ = exported
    spec = ranker_spec(source.ranker)
    ref = TorchRunner(graph_module(spec, source.ranker), spec.input_names, spec.output_names)
    art = OrtRunner.load(out / "ranker" / "fp32" / "model.onnx", threads=1)
    report = validate(art, ref, spec, "fp32", spec.batches(seed=7))
    assert report.passed, report.failures()
    feed = spec.batches(seed=8)[2]
    got = art(feed)
    order = np.argsort(-got["scores"], axis=1, kind="stable")[:, :10]
    assert np.array_equal(got["topk_idx"], order)
    assert got["topk_idx"].dtype == np.int64


class _Fake:
    """A runner returning fixed outputs, with the names a session would report."""

    def __init__(self, outputs, input_names=("input_ids", "attention_mask"), output_names=("latent_query",)):
        self.outputs = outputs
        self.input_names = list(input_names)
        self.output_names = list(output_names)

    def __call__(self, feeds):
        return self.outputs(feeds)


def test_validate_collects_names_shapes_and_values(source):
    spec = reasoner_spec(source.reasoner)
    ref = TorchRunner(graph_module(spec, source.reasoner), spec.input_names, spec.output_names)
    feeds = spec.batches(0)

    wrong_names = _Fake(lambda f: {}, output_names=("embedding",))
    rep = validate(wrong_names, ref, spec, "fp32", feeds)
    assert not rep.passed and "outputs are ['embedding'], expected ['latent_query']" in rep.failures()[0]

    wrong_shape = _Fake(lambda f: {"latent_query": np.zeros((1, 32), np.float32)})
    rep = validate(wrong_shape, ref, spec, "fp32", feeds)
    assert any("has shape (1, 32), PyTorch (3, 32)" in m for m in rep.failures())

    def noisy(f):
        q = ref(f)["latent_query"]
        return {"latent_query": q + np.float32(1e-3)}

    rep = validate(_Fake(noisy), ref, spec, "fp32", feeds)
    (fail,) = rep.failures()
    assert "max_abs_diff(latent_query) = 0.001" in fail and "needs <= 0.0001, MISSED" in fail
    # the same noise is well within the fp16 gate
    assert validate(_Fake(noisy), ref, spec, "fp16", feeds).passed

    with pytest.raises(GateFailed) as e:
        raise_if_failed([rep, validate(wrong_shape, ref, spec, "fp32", feeds)])
    assert "max_abs_diff" in str(e.value) and "has shape" in str(e.value)


def test_a_silent_cpu_fallback_is_refused():
    class Session:
        def get_providers(self):
            return ["CPUExecutionProvider"]

    with pytest.raises(ExportError, match="did not use CUDAExecutionProvider.*silent fall back"):
        check_providers(Session(), [("CUDAExecutionProvider", {}), "CPUExecutionProvider"])
    assert check_providers(Session(), ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_specs_describe_the_graphs(source):
    r = reasoner_spec(source.reasoner)
    assert r.input_names == ["input_ids", "attention_mask"] and r.output_names == ["latent_query"]
    assert [f["input_ids"].shape for f in r.batches(0)] == [(1, 16), (3, 40), (8, 64)]
    for f in r.batches(0):
        mask = f["attention_mask"]
        assert mask[0].all() and (mask[:, -1] == 1).all()  # left padding, row 0 full
        assert (np.diff(mask, axis=1) >= 0).all()
    k = ranker_spec(source.ranker)
    assert k.output_names == ["scores", "topk_scores", "topk_idx"] and k.outputs[1].shape == ("batch", 10)
    with torch.inference_mode():
        outs = graph_module(k, source.ranker)(*k.example)
    assert outs[0].shape == (2, 50) and outs[2].dtype == torch.int64


@pytest.mark.slow
def test_sensitivity_ranks_every_weight_matmul(exported, source, tmp_path):
    from rgalign.export.precision import sensitive_nodes, weight_matmuls

    out, _ = exported
    src = out / "ranker" / "fp32" / "model.onnx"
    spec = ranker_spec(source.ranker)
    ref = TorchRunner(graph_module(spec, source.ranker), spec.input_names, spec.output_names)
    feeds = spec.batches(3)
    want = [ref(f)["scores"] for f in feeds]

    from rgalign.export.validate import row_cosine

    def cosine(path):
        run = OrtRunner.load(path, threads=1)
        return float(np.concatenate([row_cosine(run(f)["scores"], w, True) for f, w in zip(feeds, want)]).mean())

    import onnx

    nodes = weight_matmuls(onnx.load(src))
    over, losses, info = sensitive_nodes(src, tmp_path, cosine, budget=1e-4)
    assert info["probe"] == "per node" and info["probes"] == len(nodes) and not info["failed"]
    assert set(losses) == set(nodes) and len(nodes) > 10
    assert all(loss >= -1e-6 for loss in losses.values())
    assert over == sorted((n for n in nodes if losses[n] > 1e-4), key=lambda n: -losses[n])
    assert not list(tmp_path.glob("probe_*"))  # probes cleaned up
