"""`rgalign deploy`: the repository it writes for each backend, read back with
``text_format.Parse``; its refusals; its atomicity. No server needed."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from rgalign.errors import ConfigError, ExportError
from rgalign.serve.repository.deploy import DeployOptions, deploy
from rgalign.serve.repository.readme import README_TEXT

STEPS = ("preprocess", "reasoner", "ranker", "postprocess")


def parse(repo: Path, model: str) -> mc.ModelConfig:
    return text_format.Parse((repo / model / "config.pbtxt").read_text(), mc.ModelConfig())


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def io(config: mc.ModelConfig) -> tuple[dict, dict]:
    def table(tensors):
        return {t.name: (mc.DataType.Name(t.data_type), list(t.dims)) for t in tensors}

    return table(config.input), table(config.output)


def test_python_backend_repository(serve_repo, serve_export):
    repo = serve_repo
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == sorted([*STEPS, "rgalign"])
    manifest = json.loads((serve_export / "manifest.json").read_text())
    n, k = manifest["serving"]["n_intents"], manifest["serving"]["topk"]

    for name in STEPS:
        cfg = parse(repo, name)
        assert cfg.name == name and cfg.backend == "python"
        assert cfg.max_batch_size == 8
        assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 0  # the default: a lone request does not wait
        assert [(g.count, g.kind) for g in cfg.instance_group] == [(1, mc.ModelInstanceGroup.KIND_CPU)]
        (warmup,) = cfg.model_warmup
        assert warmup.batch_size == 1 and warmup.count == 2
        for input_name, spec in warmup.inputs.items():
            assert (repo / name / "warmup" / spec.input_data_file).is_file(), input_name
        shim = (repo / name / "1" / "model.py").read_text()
        assert f"from rgalign.serve.models.{name} import TritonPythonModel" in shim

    inputs, outputs = io(parse(repo, "preprocess"))
    assert inputs == {"features": ("TYPE_STRING", [1])}
    assert outputs == {
        "input_ids": ("TYPE_INT64", [-1]), "attention_mask": ("TYPE_INT64", [-1]),
        "cat": ("TYPE_INT64", [5]), "num": ("TYPE_FP32", [4]),
    }  # fmt: skip
    reasoner = parse(repo, "reasoner")
    assert io(reasoner)[1] == {"latent_query": ("TYPE_FP32", [32])}
    assert reasoner.parameters["threads"].string_value == "1"
    assert int(reasoner.parameters["pad_token_id"].string_value) >= 0
    assert io(parse(repo, "ranker"))[1] == {
        "scores": ("TYPE_FP32", [n]), "topk_scores": ("TYPE_FP32", [k]), "topk_idx": ("TYPE_INT64", [k]),
    }  # fmt: skip
    post = parse(repo, "postprocess")
    assert [t.name for t in post.input if t.optional] == ["top_k"]
    assert post.parameters["default_top_k"].string_value == str(k)

    ens = parse(repo, "rgalign")
    assert ens.platform == "ensemble" and ens.max_batch_size == 8
    assert ens.WhichOneof("scheduling_choice") == "ensemble_scheduling"  # never dynamic_batching
    assert not ens.instance_group and not ens.model_warmup
    assert [s.model_name for s in ens.ensemble_scheduling.step] == list(STEPS)
    assert io(ens) == (
        {"features": ("TYPE_STRING", [1]), "top_k": ("TYPE_INT32", [1])},
        {"intent_ids": ("TYPE_STRING", [-1]), "scores": ("TYPE_FP32", [-1])},
    )
    assert (repo / "rgalign" / "1").is_dir()

    # self-contained: graphs and serving files copied, byte for byte
    for model in ("reasoner", "ranker"):
        assert sha(repo / model / "1" / "model.onnx") == manifest["artifacts"][f"{model}/fp32"]["sha256"]
    for name in ("encoders.json", "prompt_fields.json", "manifest.json"):
        assert sha(repo / "preprocess" / "1" / name) == sha(serve_export / name)
    assert (repo / "preprocess" / "1" / "reasoner" / "tokenizer").is_dir()
    assert sha(repo / "postprocess" / "1" / "intents.json") == sha(serve_export / "intents.json")
    assert (repo / "README.md").read_text() == README_TEXT
    record = json.loads((repo / "deploy.json").read_text())
    assert record["options"]["backend"] == "python" and record["default_top_k"] == k
    assert record["files_sha256"]["rgalign/config.pbtxt"] == sha(repo / "rgalign" / "config.pbtxt")


def test_tracked_triton_repo_readme_is_what_deploy_writes():
    tracked = Path(__file__).parents[2] / "triton_repo" / "README.md"
    assert tracked.read_text() == README_TEXT


def test_onnxruntime_backend_configs(serve_export, tmp_path):
    repo = tmp_path / "ort"
    deploy(serve_export, repo, DeployOptions(backend="onnxruntime", instances=2, max_batch=32))
    for model in ("reasoner", "ranker"):
        cfg = parse(repo, model)
        assert cfg.backend == "onnxruntime" and cfg.default_model_filename == "model.onnx"
        assert cfg.max_batch_size == 32 and list(cfg.dynamic_batching.preferred_batch_size) == [4, 8, 16, 32]
        assert [(g.count, g.kind) for g in cfg.instance_group] == [(2, mc.ModelInstanceGroup.KIND_CPU)]
        assert not cfg.optimization.execution_accelerators.gpu_execution_accelerator
        assert (repo / model / "1" / "model.onnx").is_file()
        assert not (repo / model / "1" / "model.py").exists()
    assert parse(repo, "preprocess").backend == "python"  # the python steps stay python
    assert [s.model_name for s in parse(repo, "rgalign").ensemble_scheduling.step] == list(STEPS)

    from rgalign.errors import ServeError
    from rgalign.serve.repository.deploy import check_servable

    with pytest.raises(ServeError, match="onnxruntime backend, which the nvidia-pytriton wheel"):
        check_servable(repo, wheel_server=True)
    check_servable(repo, wheel_server=False)  # a container's server may have it

    trt = tmp_path / "ort_trt"
    deploy(serve_export, trt, DeployOptions(backend="onnxruntime", tensorrt_accelerator=True))
    cfg = parse(trt, "reasoner")
    (acc,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert acc.name == "tensorrt" and acc.parameters["precision_mode"] == "FP32"
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU


def test_tensorrt_backend_needs_plans_in_the_export(serve_export, tmp_path):
    with pytest.raises(ExportError, match=r"no tensorrt/reasoner_fp16 .*rgalign export --tensorrt"):
        deploy(serve_export, tmp_path / "trt", DeployOptions(backend="tensorrt", precision="fp16"))
    assert not (tmp_path / "trt").exists()
    with pytest.raises(ConfigError, match="fp16 or int8"):
        DeployOptions(backend="tensorrt", precision="fp32")


def test_tensorrt_backend_configs(serve_export, tmp_path):
    """Config generation only: TensorRT cannot build engines here, so the export copy lists two
    placeholder files as its plans (deploy copies plans, it does not read them)."""
    export = tmp_path / "export"
    shutil.copytree(serve_export, export)
    manifest = json.loads((export / "manifest.json").read_text())
    (export / "tensorrt").mkdir()
    for model in ("reasoner", "ranker"):
        plan = export / "tensorrt" / f"{model}_fp16.plan"
        plan.write_bytes(b"placeholder, not an engine")
        manifest["artifacts"][f"tensorrt/{model}_fp16"] = {"path": f"tensorrt/{model}_fp16.plan", "sha256": sha(plan)}
    (export / "manifest.json").write_text(json.dumps(manifest))

    repo = tmp_path / "trt"
    deploy(export, repo, DeployOptions(backend="tensorrt", precision="fp16"))
    for model in ("reasoner", "ranker"):
        cfg = parse(repo, model)
        assert cfg.platform == "tensorrt_plan" and cfg.default_model_filename == "model.plan"
        assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
        assert cfg.dynamic_batching.preferred_batch_size[-1] == cfg.max_batch_size == 16
        assert (repo / model / "1" / "model.plan").read_bytes() == b"placeholder, not an engine"
    assert io(parse(repo, "ranker"))[0] == {
        "cat": ("TYPE_INT64", [5]), "num": ("TYPE_FP32", [4]), "query": ("TYPE_FP32", [32]),
    }  # fmt: skip


def test_a_failed_deploy_leaves_the_existing_repository(serve_export, tmp_path):
    repo = tmp_path / "repo"
    deploy(serve_export, repo, DeployOptions(max_batch=4))
    before = (repo / "rgalign" / "config.pbtxt").read_text()
    with pytest.raises(ExportError, match=r"no reasoner/int8 .*--precision int8"):
        deploy(serve_export, repo, DeployOptions(precision="int8"))
    assert (repo / "rgalign" / "config.pbtxt").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["repo"]  # no temporary folder left
    deploy(serve_export, repo, DeployOptions(max_batch=2))  # a good deploy replaces it
    assert parse(repo, "rgalign").max_batch_size == 2


def test_changed_graph_is_refused(serve_export, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(serve_export, export)
    with open(export / "ranker" / "fp32" / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ExportError, match="does not match the sha256"):
        deploy(export, tmp_path / "repo")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"backend": "torchscript"}, "unknown backend"),
        ({"precision": "fp8"}, "unknown precision"),
        ({"instances": 0}, "--instances"),
        ({"max_batch": 0}, "--max-batch"),
        ({"tensorrt_accelerator": True}, "onnxruntime only"),
        ({"layout": "pipeline"}, "unknown layout"),
        ({"layout": "fused", "backend": "onnxruntime"}, "fused layout runs ONNX Runtime inside the python backend"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        DeployOptions(**kwargs)


def test_default_top_k_out_of_range(serve_export, tmp_path):
    with pytest.raises(ConfigError, match=r"top_k 51 is not in 1\.\.50"):
        deploy(serve_export, tmp_path / "repo", DeployOptions(default_top_k=51))


def test_cli_deploy_and_its_errors(serve_export, tmp_path, capsys):
    from rgalign.cli import main

    main(["deploy", str(serve_export), "--out", str(tmp_path / "repo"), "--max-batch", "4", "--top-k", "3",
          "--layout", "ensemble"])
    assert "deployed" in capsys.readouterr().out
    assert parse(tmp_path / "repo", "postprocess").parameters["default_top_k"].string_value == "3"
    main(["deploy", str(serve_export), "--out", str(tmp_path / "fused"), "--top-k", "3"])  # auto: fused
    assert "fused layout" in capsys.readouterr().out
    assert parse(tmp_path / "fused", "rgalign").parameters["default_top_k"].string_value == "3"
    with pytest.raises(SystemExit) as e:
        main(["deploy", str(serve_export), "--out", str(tmp_path / "trt"), "--backend", "tensorrt", "--precision", "int8"])
    assert e.value.code != 0
    out = capsys.readouterr().out
    assert "error:" in out and "rgalign export --tensorrt" in out and "Traceback" not in out


def test_layout_defaults():
    assert DeployOptions().layout == "fused"  # python backend: measured faster (README "Serving")
    assert DeployOptions(backend="onnxruntime").layout == "ensemble"
    assert DeployOptions(layout="ensemble").to_dict()["layout"] == "ensemble"


def test_fused_repository(fused_repo, serve_export, serve_repo):
    repo = fused_repo
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == ["rgalign"]
    record = json.loads((repo / "deploy.json").read_text())
    assert record["layout"] == "fused" and record["models"] == ["rgalign"]
    cfg = parse(repo, "rgalign")
    assert cfg.backend == "python" and cfg.max_batch_size == 8 and cfg.response_cache.enable
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]
    assert {k: v.string_value for k, v in cfg.parameters.items()} == {
        "precision": "fp32", "threads": "1", "default_top_k": str(record["default_top_k"]),
        "max_item_bytes": "65536", "max_text_chars": "4096", "batch_invariant": "1"}  # the steps' limits
    # the same contract as the ensemble's
    ensemble = parse(serve_repo, "rgalign")
    assert io(cfg) == io(ensemble)
    assert [t.optional for t in cfg.input] == [t.optional for t in ensemble.input] == [False, True]
    (warmup,) = cfg.model_warmup
    assert (repo / "rgalign" / "warmup" / warmup.inputs["features"].input_data_file).is_file()
    assert "rgalign.serve.models.fused import TritonPythonModel" in (repo / "rgalign" / "1" / "model.py").read_text()
    files = repo / "rgalign" / "1"
    for rel in ("manifest.json", "encoders.json", "intents.json", "prompt_fields.json",
                "reasoner/fp32/model.onnx", "ranker/fp32/model.onnx", "reasoner/tokenizer"):
        assert (files / rel).exists(), rel
        if (files / rel).is_file():
            assert sha(files / rel) == sha(serve_export / rel), rel


def test_the_ensemble_enables_the_response_cache(serve_repo):
    assert parse(serve_repo, "rgalign").response_cache.enable
    assert not any(parse(serve_repo, step).response_cache.enable for step in STEPS)
