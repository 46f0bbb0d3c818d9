"""`export_run` on the fake run: layout, manifest, every precision through its gate, and a failed
gate that raises with its figures and leaves an existing export untouched."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from rgalign.errors import ExportError
from rgalign.export import GateFailed, export_run
from rgalign.export.onnx_export import check_onnx

MODELS = ("reasoner", "ranker")
PRECISIONS = ("fp32", "fp16", "int8")


def _tree_digest(root: Path) -> dict[str, str]:
    files = (p for p in sorted(root.rglob("*")) if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.mark.slow
def test_layout_and_manifest(exported):
    out, manifest = exported
    for model in MODELS:
        for precision in PRECISIONS:
            assert (out / model / precision / "model.onnx").is_file()
    for name in ("encoders.json", "prompt_fields.json", "intents.json", "report.json", "manifest.json"):
        assert (out / name).is_file(), name
    assert (out / "reasoner" / "tokenizer" / "tokenizer.json").is_file()
    assert not (out / ".work").exists()

    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    keys = ("format_version", "rgalign_version", "source", "versions", "serving", "artifacts", "steps", "tolerances")
    for key in keys:
        assert key in manifest, key
    src = manifest["source"]
    assert src["reasoner"] == "stages/1-warmup/reasoner" and src["ranker"] == "stages/2-reward/ranker"
    assert any(k.startswith("stages/1-warmup/reasoner/") for k in src["files_sha256"])
    assert "stages/2-reward/ranker/model.safetensors" in src["files_sha256"]
    assert all(len(h) == 64 for h in src["files_sha256"].values())
    for pkg in ("torch", "onnx", "onnxruntime", "onnxscript", "transformers"):
        assert pkg in manifest["versions"], pkg
    serving = manifest["serving"]
    assert serving["max_prompt_length"] == 96 and serving["topk"] == 10 and serving["n_intents"] == 50
    intents = json.loads((out / "intents.json").read_text())
    assert len(intents["intent_ids"]) == len(intents["intent_texts"]) == 50

    r = manifest["artifacts"]["reasoner/fp16"]
    assert [i["name"] for i in r["inputs"]] == ["input_ids", "attention_mask"]
    assert r["inputs"][0] == {"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"]}
    assert r["outputs"] == [{"name": "latent_query", "dtype": "float32", "shape": ["batch", 32]}]  # fp32 IO kept
    k = manifest["artifacts"]["ranker/int8"]
    assert [o["name"] for o in k["outputs"]] == ["scores", "topk_scores", "topk_idx"]
    assert k["outputs"][2] == {"name": "topk_idx", "dtype": "int64", "shape": ["batch", 10]}
    for key, art in manifest["artifacts"].items():
        if "path" in art:
            assert hashlib.sha256((out / art["path"]).read_bytes()).hexdigest() == art["sha256"], key

    statuses = {s["name"]: s["status"] for s in manifest["steps"]}
    assert statuses["TensorRT engines"] == "SKIPPED"
    others = [s for s in manifest["steps"] if "int8" not in s["name"]]
    assert all(s["status"] in ("OK", "SKIPPED") for s in others)
    assert all({"name", "status", "seconds", "message"} <= set(s) for s in manifest["steps"])
    assert manifest["gates_passed"] is True


@pytest.mark.slow
def test_every_precision_passes_its_gate(exported):
    out, manifest = exported
    arts = manifest["artifacts"]
    fp32 = arts["reasoner/fp32"]["gate"]["figures"]["max_abs_diff(latent_query)"]
    assert fp32["passed"] and fp32["value"] <= 1e-4 and fp32["threshold"] == 1e-4
    assert arts["ranker/fp32"]["gate"]["figures"]["max_abs_diff(scores)"]["value"] <= 1e-4
    # the reasoner's cosine is batch-centred (test_gates_can_fail.py says why), the ranker's row-centred
    for model, figure in (("reasoner", "cosine_centred(latent_query)"), ("ranker", "cosine(scores)")):
        fig = arts[f"{model}/fp16"]["gate"]["figures"][figure]
        assert fig["passed"] and fig["value"] >= 0.999 and fig["threshold"] == 0.999
        fig = arts[f"{model}/int8"]["gate"]["figures"][figure]
        assert fig["passed"] and fig["value"] >= 0.99
    assert "threshold" not in arts["reasoner/fp16"]["gate"]["figures"]["cosine(latent_query)"]  # reported beside it
    e2e = arts["pipeline/int8"]["gate"]["figures"]
    assert e2e["top10_overlap"]["passed"] and e2e["top10_overlap"]["value"] >= 0.9
    assert e2e["gauc_drop"]["passed"] and e2e["gauc_drop"]["value"] <= 0.002
    assert e2e["requests"]["value"] == 80  # the run's test split

    report = json.loads((out / "report.json").read_text())
    for model in MODELS:
        cands = report["int8_candidates"][model]
        methods = [c["method"] for c in cands]
        # static QDQ is skipped on CPU when dynamic passed (round 2, sensitive MatMuls fp32, only if needed)
        assert methods[0] == "dynamic" and "static-minmax" not in methods
        assert "--int8-methods" in report["int8_skipped"][model]["static-minmax"]
        assert report["artifacts"][f"{model}/int8"]["method"] in [c["method"] for c in cands if c["passed"]]
    pairs = report["int8_pairs"]
    assert pairs and pairs[-1]["gate"]["passed"] and not any(p["gate"]["passed"] for p in pairs[:-1])
    assert (pairs[-1]["reasoner"], pairs[-1]["ranker"]) == (
        report["artifacts"]["reasoner/int8"]["method"], report["artifacts"]["ranker/int8"]["method"])
    for model in MODELS:
        fusion = report["artifacts"][f"{model}/fp32"]["fusion"]
        assert fusion["ops_before"] and fusion["ops_after"]
        assert sum(fusion["ops_before"].values()) == fusion["nodes_before"]
    # the reasoner's RMSNorm, rotary embedding and attention are fused (and the result kept)
    fused = report["artifacts"]["reasoner/fp32"]["fusion"]
    assert fused["kept"] and fused["fusions_applied"].get("rms_normalization", 0) > 0
    assert fused["ops_after"].get("com.microsoft::MultiHeadAttention", 0) > 0
    lat = report["latency_ms"]
    for key in ("reasoner/pytorch", "reasoner/fp32", "reasoner/int8", "ranker/pytorch", "ranker/fp32"):
        assert lat[key] > 0, key
    fp16 = report["artifacts"]["pipeline/fp16"]["gate"]["figures"]  # end to end, reported, not gated
    assert "top10_overlap" in fp16 and "threshold" not in fp16["top10_overlap"]


@pytest.mark.slow
def test_onnx_checker_passes_on_every_file(exported):
    out, _ = exported
    for path in sorted(out.glob("*/*/model.onnx")):
        assert check_onnx(path).startswith("onnx.checker OK"), path
    # the ranker graphs hold no default-domain contrib op: the plain checker accepts them as is
    onnx.checker.check_model(onnx.load(out / "ranker" / "fp32" / "model.onnx"), full_check=True)


def _perturb(path: Path, scale: float = 0.05) -> None:
    """Add noise to the largest float weight of an ONNX file (in place)."""
    model = onnx.load(path)
    init = max(
        (i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2),
        key=lambda i: int(np.prod(i.dims)),
    )
    w = onnx.numpy_helper.to_array(init)
    noisy = w + np.random.default_rng(0).normal(0.0, scale, size=w.shape).astype(np.float32)
    init.CopyFrom(onnx.numpy_helper.from_array(noisy, init.name))
    onnx.save(model, path)


@pytest.mark.slow
def test_perturbed_graph_fails_its_gate_and_leaves_the_export_alone(exported, fake_run, tmp_path, monkeypatch):
    good, _ = exported
    out = tmp_path / "export"
    shutil.copytree(good, out)
    before = _tree_digest(out)

    # the "exporter" hands back the good graph with a weight perturbed after export: what a
    # broken exporter or a silent numerics bug would produce
    def broken_export(spec, model, path, exporter="dynamo", external_threshold=None):
        from rgalign.export.onnx_export import OnnxArtifact

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(good / spec.name / "fp32" / "model.onnx", path)
        _perturb(path)
        return OnnxArtifact(path, "dynamo", 18, 0.0)

    monkeypatch.setattr("rgalign.export.onnx_export.export_onnx", broken_export)
    with pytest.raises(GateFailed) as e:
        export_run(fake_run, out, precisions="fp32,fp16", threads=1)
    msg = str(e.value)
    assert isinstance(e.value, ExportError)
    # every missed figure is listed, with its value and threshold
    assert "reasoner/fp32: max_abs_diff(latent_query) = " in msg and "needs <= 0.0001, MISSED" in msg
    assert "ranker/fp32: max_abs_diff(scores) = " in msg
    assert "reasoner/fp16: cosine_centred(latent_query)" in msg
    assert "\n" not in msg
    assert {r.artifact for r in e.value.reports} >= {"reasoner/fp32", "ranker/fp32"}
    # nothing replaced, nothing left behind
    assert _tree_digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_int8_without_held_out_requests_fails_before_exporting(fake_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(fake_run, run)
    info = json.loads((run / "run.json").read_text())
    info["data"]["path"] = str(tmp_path / "gone")
    (run / "run.json").write_text(json.dumps(info))
    with pytest.raises(ExportError, match="int8 is gated on held-out requests"):
        export_run(run, tmp_path / "export", precisions="int8")
    assert not (tmp_path / "export").exists()


def test_bad_arguments_fail_at_once(fake_run, tmp_path):
    with pytest.raises(ExportError, match="unknown precision"):
        export_run(fake_run, tmp_path / "e", precisions="fp32,bf16")
    with pytest.raises(ExportError, match="unknown calibration"):
        export_run(fake_run, tmp_path / "e", calibration="kl")
    with pytest.raises(ExportError, match="not a training run"):
        export_run(tmp_path, tmp_path / "e")
    assert not (tmp_path / "e").exists()


@pytest.mark.slow
def test_cli_gate_miss_is_one_line_and_non_zero(exported, fake_run, tmp_path, monkeypatch, capsys):
    from rgalign.cli import main

    good, _ = exported

    def broken_export(spec, model, path, exporter="dynamo", external_threshold=None):
        from rgalign.export.onnx_export import OnnxArtifact

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(good / spec.name / "fp32" / "model.onnx", path)
        if spec.name == "ranker":
            _perturb(path)
        return OnnxArtifact(path, "dynamo", 18, 0.0)

    monkeypatch.setattr("rgalign.export.onnx_export.export_onnx", broken_export)
    with pytest.raises(SystemExit) as e:
        main(["export", str(fake_run), "--out", str(tmp_path / "e"), "--precision", "fp32", "--threads", "1"])
    assert e.value.code != 0
    text = capsys.readouterr().out
    error = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "ranker/fp32: max_abs_diff(scores) = " in error[0] and "MISSED" in error[0]
    assert "Traceback" not in text and not (tmp_path / "e").exists()


def test_refuses_to_replace_a_folder_that_is_not_an_export(fake_run, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    with pytest.raises(ExportError, match="not empty and holds no export"):
        export_run(fake_run, out, precisions="fp32")
    assert (out / "notes.txt").read_text() == "precious"


@pytest.mark.slow
def test_readme_of_the_export_folder_is_kept(fake_run, tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "README.md").write_text("# export/\n")
    export_run(fake_run, out, precisions="fp32", exporter="legacy", fuse=False, threads=1)
    assert (out / "README.md").read_text() == "# export/\n" and (out / "manifest.json").is_file()


def test_eval_requests_gauc_matches_the_metric():
    from rgalign.data.encoders import FeatureEncoders
    from rgalign.data.requests import build_requests
    from rgalign.data.synth import tiny_dataset
    from rgalign.export import EvalRequests
    from rgalign.metrics import gauc

    ds = tiny_dataset()
    ra = build_requests(ds, FeatureEncoders.fit(ds), "test")
    ev = EvalRequests.from_request_arrays(ra, limit=50)
    assert len(ev) == 50 and ev.shown.shape[0] == 50
    scores = np.random.default_rng(0).standard_normal((50, 50))
    mask = ev.shown >= 0
    rows = np.nonzero(mask)[0]
    want = gauc(ev.labels[mask], scores[rows, ev.shown[mask]], ev.groups[rows])
    assert ev.gauc(scores) == pytest.approx(want)
    with pytest.raises(ExportError, match="must both be"):
        EvalRequests(ev.records, ev.shown, ev.labels[:, :3], ev.groups)


@pytest.mark.slow
def test_caller_supplied_held_out_and_calibration_requests(fake_run, tmp_path):
    from rgalign.data.encoders import FeatureEncoders
    from rgalign.data.requests import build_requests
    from rgalign.data.synth import tiny_dataset
    from rgalign.export import EvalRequests

    ds = tiny_dataset()
    enc = FeatureEncoders.fit(ds)
    held_out = EvalRequests.from_request_arrays(build_requests(ds, enc, "valid"))
    calibration = build_requests(ds, enc, "train").raw[:64]
    manifest = export_run(fake_run, tmp_path / "e", precisions="int8", eval_requests=held_out,
                          calibration_records=calibration, exporter="legacy", fuse=False, threads=1)
    e2e = manifest["artifacts"]["pipeline/int8"]["gate"]["figures"]
    assert e2e["requests"]["value"] == len(held_out) == 40 and e2e["gauc_drop"]["passed"]
    steps = {s["name"] for s in manifest["steps"]}
    assert "load held-out and calibration requests" not in steps  # nothing read from the run's data
