"""Gates that can fail, and a bounded int8 search.

A reasoner whose latent queries are nearly the same for every prompt (an untrained LLM: cosine
0.9999 between prompts at Qwen3-0.6B shape) passes any precision under an uncentred cosine. The
reasoner's gate is batch-centred: a "precision" that scrambles the differences between prompts
passes the old figure and misses the new one."""

from __future__ import annotations

import numpy as np
import torch

from rgalign.export.precision import probe_groups, sensitive_nodes
from rgalign.export.specs import ExportSpec, TensorSpec
from rgalign.export.validate import validate

D = 32


def _spec() -> ExportSpec:
    def batches(seed: int) -> list[dict[str, np.ndarray]]:
        rng = np.random.default_rng(seed)
        return [{"input_ids": rng.integers(4, 500, size=(b, 12)), "attention_mask": np.ones((b, 12), np.int64)}
                for b in (1, 3, 8)]

    return ExportSpec(
        name="reasoner",
        inputs=(TensorSpec("input_ids", "int64", ("batch", "seq")),
                TensorSpec("attention_mask", "int64", ("batch", "seq"))),
        outputs=(TensorSpec("latent_query", "float32", ("batch", D)),),
        gated_output="latent_query", centre_gated=False, centre_batch=True,
        dynamic_shapes={}, example=(torch.zeros(1, 1, dtype=torch.long),) * 2, batches=batches,
    )


def _collapsed(seed: int, spread: float = 1e-3):
    """A reasoner whose latents all point along one direction, plus a prompt-dependent wobble
    of size ``spread`` (its own random projection of the token ids, per ``seed``)."""
    common = np.random.default_rng(100).standard_normal(D)
    proj = np.random.default_rng(seed).standard_normal((500, D))

    def run(feeds):
        wobble = proj[feeds["input_ids"]].mean(axis=1)
        q = common + spread * wobble / np.linalg.norm(wobble, axis=-1, keepdims=True) * np.linalg.norm(common)
        return {"latent_query": (q / np.linalg.norm(q, axis=-1, keepdims=True)).astype(np.float32)}

    run.input_names = ["input_ids", "attention_mask"]
    run.output_names = ["latent_query"]
    return run


def test_uncentred_cosine_passes_a_broken_precision_the_centred_gate_rejects():
    spec = _spec()
    feeds = spec.batches(0)
    reference = _collapsed(seed=1)
    broken = _collapsed(seed=2)  # every prompt's difference from the others replaced by noise
    for precision in ("fp16", "int8"):
        rep = validate(broken, reference, spec, precision, feeds)
        threshold = spec.tolerances.cosine(precision)
        assert rep.figure("cosine(latent_query)") > threshold  # the old, uncentred gate: passed
        assert rep.figure("cosine_centred(latent_query)") < 0.5  # the new gate: far below
        assert not rep.passed
        assert any("cosine_centred(latent_query)" in f and "MISSED" in f for f in rep.failures())


def test_the_centred_gate_passes_a_faithful_precision():
    spec = _spec()
    feeds = spec.batches(0)
    reference = _collapsed(seed=1)

    def faithful(f):
        q = reference(f)["latent_query"]
        return {"latent_query": q + np.float32(1e-7) * np.random.default_rng(0).standard_normal(q.shape).astype(np.float32)}

    faithful.input_names, faithful.output_names = reference.input_names, reference.output_names
    rep = validate(faithful, reference, spec, "fp16", feeds)
    assert rep.passed, rep.failures()
    assert rep.figure("cosine_centred(latent_query)") > 0.999


def test_probes_are_per_node_then_per_layer_type_then_blocks():
    small = [f"n{i}" for i in range(10)]
    assert probe_groups(small, {}) == {n: [n] for n in small}
    kinds = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    nodes = [f"node_MatMul_{i}" for i in range(28 * 7)]
    weights = {n: f"model.layers.{i // 7}.{kinds[i % 7]}.weight" for i, n in enumerate(nodes)}
    groups = probe_groups(nodes, weights)
    assert len(groups) == 7 and all(len(v) == 28 for v in groups.values())
    blocks = probe_groups(nodes, {n: "val" for n in nodes})  # names that say nothing
    assert len(blocks) == 8 and sorted(sum(blocks.values(), [])) == sorted(nodes)


def test_probes_stop_at_the_time_budget_and_a_failed_probe_is_recorded(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    from rgalign.export.external import save_model

    inits = [numpy_helper.from_array(np.eye(8, dtype=np.float32), f"w{i}") for i in range(3)]
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"h{i}", f"w{i}"], [f"h{i + 1}"], name=f"mm{i}")
             for i in range(3)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("h3", TensorProto.FLOAT, [1, 8])], inits)
    src = save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "g.onnx",
                     external=True)

    def cosine(path):
        if path.name == "probe_1.onnx":
            raise RuntimeError("INVALID_PROTOBUF")
        return 1.0

    over, losses, info = sensitive_nodes(src, tmp_path / "probes", cosine, budget=1e-3)
    assert over == [] and set(losses) == {"mm0", "mm2"} and "mm1" in info["failed"]
    over, losses, info = sensitive_nodes(src, tmp_path / "probes", cosine, budget=1e-3, seconds=-1.0)
    assert losses == {} and info["skipped_for_time"] == ["mm0", "mm1", "mm2"]
