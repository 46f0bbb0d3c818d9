"""A big backbone's export path on a tiny model: `external_data_threshold` set low sends the fake
run's graphs through ONNX external data (``model.onnx`` + ``model.onnx.data``), as a 2.4 GB
Qwen3-0.6B-shape reasoner goes. Every precision is built, gated and loaded from the final folder
after the work folder is gone; the manifest hashes every file; deploy and the in-process pipeline
run on it. No file here is bigger than the tiny model."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from rgalign.export import export_run
from rgalign.export.external import external_files, place, save_model
from rgalign.export.onnx_export import check_onnx

MODELS = ("reasoner", "ranker")
PRECISIONS = ("fp32", "fp16", "int8")


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def external_export(fake_run, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ext") / "export"
    manifest = export_run(fake_run, out, precisions=PRECISIONS, threads=1, external_data_threshold=0)
    return out, manifest


@pytest.mark.slow
def test_every_artifact_carries_and_hashes_its_weights(external_export, tmp_path):
    out, manifest = external_export
    assert manifest["gates_passed"]
    for model in MODELS:
        for precision in PRECISIONS:
            art = manifest["artifacts"][f"{model}/{precision}"]
            graph = out / art["path"]
            refs = external_files(graph)
            assert refs, f"{model}/{precision} has no external data"
            assert [out / d["path"] for d in art["external_data"]] == refs
            for d in art["external_data"]:
                assert _sha(out / d["path"]) == d["sha256"] and (out / d["path"]).stat().st_size == d["bytes"]
            assert art["bytes_total"] == graph.stat().st_size + sum(d["bytes"] for d in art["external_data"])
            check_onnx(graph)  # onnx.checker by path, with its weights beside it
    steps = {s["name"]: s for s in manifest["steps"]}
    assert steps["load every artifact from the export folder"]["status"] == "OK"
    # an LLM-size reasoner's PyTorch weights are freed once every PyTorch pass is done, and each
    # step says how much memory it peaked at (Linux)
    assert steps["release the PyTorch reasoner"]["status"] == "OK"
    assert all(s["peak_rss_mb"] > 0 for s in manifest["steps"])
    assert manifest["peak_rss_mb"] == max(s["peak_rss_mb"] for s in manifest["steps"])
    assert not (out / ".work").exists()

    # the export folder moved elsewhere still loads: nothing points back at the work folder
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    from rgalign.data.encoders import FeatureEncoders
    from rgalign.inference.pipeline import Pipeline
    from rgalign.serve.repository.deploy import sample_record

    records = [sample_record(FeatureEncoders.from_json(moved / "encoders.json"))]
    for precision in PRECISIONS:
        ranked = Pipeline.from_export(moved, precision, threads=1)(records, k=3)
        assert len(ranked) == 1 and len(ranked[0].intent_ids) == 3


@pytest.mark.slow
def test_weight_only_int8_is_a_candidate(external_export):
    out, _ = external_export
    report = json.loads((out / "report.json").read_text())
    weight_only = [c for c in report["int8_candidates"]["reasoner"] if c["method"] == "weight-only"]
    assert weight_only and weight_only[0]["gate"] is not None  # measured, passed or not
    e2e = report["artifacts"]["pipeline/int8"]["gate"]["figures"]
    assert e2e["cosine_centred(latent_query)"]["threshold"] == 0.99  # gated on the held-out prompts


@pytest.mark.slow
def test_int4_is_built_by_path_and_fails_with_its_figure(fake_run, tmp_path):
    """The tiny untrained reasoner's int4 error exceeds the differences between its held-out
    prompts (as issue 15 measured at 0.6B shape): the centred gate says so, with the figure."""
    from rgalign.export import GateFailed

    with pytest.raises(GateFailed, match=r"pipeline/int4: cosine_centred\(latent_query\) = [0-9.]+ \(needs >= 0.99, MISSED"):
        export_run(fake_run, tmp_path / "export", precisions="fp32,int4", threads=1, external_data_threshold=0,
                   fuse=False)
    assert not (tmp_path / "export").exists()


@pytest.mark.slow
def test_deploy_copies_the_weights_and_serves_in_process(external_export, tmp_path):
    from rgalign.serve.repository.deploy import DeployOptions, deploy
    from rgalign.serve.models.reasoner import load_runner

    out, manifest = external_export
    repo = tmp_path / "repo"
    deploy(out, repo, DeployOptions(backend="python", precision="fp32", layout="ensemble"))
    version = repo / "reasoner" / "1"
    assert (version / "model.onnx").is_file() and (version / "model.onnx.data").is_file()
    assert external_files(version / "model.onnx") == [version / "model.onnx.data"]
    runner = load_runner({"model_repository": str(repo / "reasoner"), "model_version": "1",
                          "model_config": '{"parameters": {"threads": {"string_value": "1"}}}'})
    q = runner({"input_ids": np.full((1, 8), 5, np.int64), "attention_mask": np.ones((1, 8), np.int64)})
    assert q["latent_query"].shape == (1, manifest["serving"]["d_query"])


@pytest.mark.slow
@pytest.mark.triton
def test_the_default_deployment_serves_an_answer(external_export, tmp_path):
    """The 0.6B deployment's path on the tiny model: ``rgalign deploy --precision int8`` (fused
    layout, the python backend's default) carries each graph's weights, ``deploy.json`` hashes
    every one of them, and a real tritonserver loads it and answers as the in-process pipeline."""
    from rgalign.inference.pipeline import Pipeline
    from rgalign.inference.records import dataset_records
    from rgalign.serve.client import RgalignClient
    from rgalign.serve.repository.deploy import DeployOptions, deploy
    from rgalign.serve.server import TritonServer

    out, manifest = external_export
    repo = tmp_path / "repo"
    deploy(out, repo, DeployOptions(precision="int8", threads=1))
    deployed = json.loads((repo / "deploy.json").read_text())
    assert deployed["layout"] == "fused"
    version = repo / "rgalign" / "1"
    for model in MODELS:
        graph = version / model / "int8" / "model.onnx"
        refs = external_files(graph)
        assert refs and all(f.is_file() for f in refs), f"{model}: weights not beside the deployed graph"
        for f in [graph, *refs]:
            assert deployed["files_sha256"][str(f.relative_to(repo))] == _sha(f)
    records = dataset_records(manifest["source"]["data"]["path"], limit=4)
    want = Pipeline.from_export(out, "int8", threads=1)(records, k=3)
    srv = TritonServer(repo, log_file=tmp_path / "tritonserver.log")
    srv.start(timeout=120)
    try:
        with RgalignClient(srv.http_address) as client:
            got = [client.rank([r], k=3)[0] for r in records]  # batch 1: int8 rows as in process
    finally:
        srv.stop()
    for g, w in zip(got, want, strict=True):
        assert g.intent_ids == w.intent_ids
        np.testing.assert_allclose(g.scores, w.scores, atol=1e-4)


def test_place_renames_the_weights_and_rewrites_the_references(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(600, dtype=np.float32).reshape(20, 30), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 20])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 30])], [w],
    )
    src = save_model(helper.make_model(graph), tmp_path / "work" / "exported.onnx", external=True)
    assert external_files(src) == [tmp_path / "work" / "exported.onnx.data"]
    written = place(src, tmp_path / "final" / "model.onnx")
    shutil.rmtree(tmp_path / "work")
    assert [p.name for p in written] == ["model.onnx", "model.onnx.data"]
    import onnxruntime as ort

    y = ort.InferenceSession(str(written[0])).run(None, {"x": np.ones((1, 20), np.float32)})[0]
    np.testing.assert_allclose(y[0], np.arange(600, dtype=np.float32).reshape(20, 30).sum(0))


@pytest.mark.slow
def test_the_reasoner_graph_has_no_lm_head(external_export):
    out, _ = external_export
    names = [i.name for i in onnx.load(str(out / "reasoner/fp32/model.onnx"), load_external_data=False).graph.initializer]
    assert names and not [n for n in names if "lm_head" in n]


@pytest.mark.slow
def test_a_graph_shipped_without_its_weights_fails_the_export(fake_run, tmp_path, monkeypatch):
    """The bug of issue 15: only model.onnx copied, its .data left in the work folder."""
    from rgalign.errors import ExportError

    def graph_only(src, dst):
        dst = Path(dst)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        return [dst]

    monkeypatch.setattr("rgalign.export.outputs.place", graph_only)
    out = tmp_path / "export"
    with pytest.raises(ExportError, match="not in the export folder"):
        export_run(fake_run, out, precisions="fp32", threads=1, external_data_threshold=0, fuse=False)
    assert not out.exists()
