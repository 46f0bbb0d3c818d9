"""Triton configs of each kind parse back (``text_format.Parse``) with the fields we set."""

from __future__ import annotations

import pytest
from google.protobuf import text_format

from rgalign.errors import ConfigError
from rgalign.serve.repository import config as tc

mc = tc.mc


def _roundtrip(tmp_path, config):
    path = tc.write_config(tmp_path / config.name, config)
    assert path == tmp_path / config.name / "config.pbtxt"
    parsed = text_format.Parse(path.read_text(), mc.ModelConfig())
    assert parsed == config
    assert not list(path.parent.glob(".config.*"))  # no temp file left behind
    return parsed


X = tc.TensorSpec("INPUT0", "FP32", (-1,))
Y = tc.TensorSpec("OUTPUT0", "FP32", (-1,))


def test_python_model_with_batching_instances_warmup(tmp_path):
    cfg = tc.python_model(
        "preprocess",
        inputs=[
            tc.TensorSpec("features", "BYTES", (1,)),
            tc.TensorSpec("top_k", "INT32", (1,), optional=True),
        ],
        outputs=[tc.TensorSpec("token_ids", "int64", (-1,))],
        max_batch_size=8,
        dynamic_batching=tc.dynamic_batching(
            preferred_batch_sizes=(4, 8), max_queue_delay_microseconds=500
        ),
        instance_groups=[tc.instance_group(count=2, kind="cpu")],
        warmup=[
            tc.model_warmup(
                "zeros",
                {
                    "features": tc.WarmupInput("BYTES", (1,), "zero"),
                    "top_k": tc.WarmupInput("INT32", (1,), "random"),
                },
                batch_size=4,
                count=2,
            ),
            tc.model_warmup("file", {"features": tc.WarmupInput("BYTES", (1,), "features.bin")}),
        ],
        parameters={"tokenizer": "tok.json"},
    )
    p = _roundtrip(tmp_path, cfg)
    assert p.backend == "python" and p.max_batch_size == 8
    assert [(i.name, i.data_type, list(i.dims), i.optional) for i in p.input] == [
        ("features", mc.TYPE_STRING, [1], False),
        ("top_k", mc.TYPE_INT32, [1], True),
    ]
    assert p.output[0].data_type == mc.TYPE_INT64 and list(p.output[0].dims) == [-1]
    assert p.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert list(p.dynamic_batching.preferred_batch_size) == [4, 8]
    assert p.dynamic_batching.max_queue_delay_microseconds == 500
    assert (p.instance_group[0].count, p.instance_group[0].kind) == (
        2,
        mc.ModelInstanceGroup.KIND_CPU,
    )
    w0, w1 = p.model_warmup
    assert (w0.name, w0.batch_size, w0.count) == ("zeros", 4, 2)
    assert w0.inputs["features"].zero_data and w0.inputs["top_k"].random_data
    assert w1.inputs["features"].input_data_file == "features.bin"
    assert p.parameters["tokenizer"].string_value == "tok.json"


def test_onnxruntime_model_with_tensorrt_accelerator(tmp_path):
    trt = tc.TensorRTAccelerator(precision_mode="INT8", extra={"trt_engine_cache_path": "/cache"})
    cfg = tc.onnxruntime_model(
        "ranker",
        [X],
        [Y],
        max_batch_size=16,
        instance_groups=[tc.instance_group(1, "gpu", gpus=[0])],
        tensorrt=trt,
    )
    p = _roundtrip(tmp_path, cfg)
    assert p.backend == "onnxruntime" and p.default_model_filename == "model.onnx"
    assert p.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU and list(
        p.instance_group[0].gpus
    ) == [0]
    (acc,) = p.optimization.execution_accelerators.gpu_execution_accelerator
    assert acc.name == "tensorrt"
    assert dict(acc.parameters) == {
        "precision_mode": "INT8",
        "max_workspace_size_bytes": str(1 << 30),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": "/cache",
    }
    plain = tc.onnxruntime_model("ranker", [X], [Y])
    assert not plain.HasField("optimization") and plain.max_batch_size == 0


def test_tensorrt_plan_defaults_to_gpu(tmp_path):
    p = _roundtrip(tmp_path, tc.tensorrt_model("reasoner", [X], [Y], max_batch_size=4))
    assert p.platform == "tensorrt_plan" and p.default_model_filename == "model.plan"
    assert p.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU


def test_ensemble_steps_and_no_dynamic_batching(tmp_path):
    steps = [
        tc.EnsembleStep("pre", {"INPUT0": "X"}, {"OUTPUT0": "mid"}),
        tc.EnsembleStep("post", {"INPUT0": "mid"}, {"OUTPUT0": "Y"}, model_version=1),
    ]
    cfg = tc.ensemble_model(
        "pipeline",
        [tc.TensorSpec("X", "FP32", (-1,))],
        [tc.TensorSpec("Y", "FP32", (-1,))],
        steps,
        max_batch_size=8,
    )
    p = _roundtrip(tmp_path, cfg)
    assert p.platform == "ensemble" and p.WhichOneof("scheduling_choice") == "ensemble_scheduling"
    assert [
        (s.model_name, s.model_version, dict(s.input_map), dict(s.output_map))
        for s in p.ensemble_scheduling.step
    ] == [
        ("pre", -1, {"INPUT0": "X"}, {"OUTPUT0": "mid"}),
        ("post", 1, {"INPUT0": "mid"}, {"OUTPUT0": "Y"}),
    ]
    # dynamic_batching and ensemble_scheduling are one oneof: setting it drops the steps.
    cfg.dynamic_batching.SetInParent()
    with pytest.raises(ConfigError, match="oneof"):
        tc.write_config(tmp_path / "pipeline", cfg)


def test_ensemble_rejects_unwired_tensors():
    x, y = tc.TensorSpec("X", "FP32", (-1,)), tc.TensorSpec("Y", "FP32", (-1,))
    with pytest.raises(ConfigError, match="reads"):
        tc.ensemble_model(
            "e", [x], [y], [tc.EnsembleStep("m", {"INPUT0": "nope"}, {"OUTPUT0": "Y"})]
        )
    with pytest.raises(ConfigError, match="no step produces"):
        tc.ensemble_model("e", [x], [y], [tc.EnsembleStep("m", {"INPUT0": "X"}, {"OUTPUT0": "Z"})])


@pytest.mark.parametrize(
    "build, match",
    [
        (
            lambda: tc.python_model("m", [X], [Y], dynamic_batching=tc.dynamic_batching()),
            "max_batch_size > 0",
        ),
        (
            lambda: tc.python_model(
                "m", [X], [Y], max_batch_size=4, dynamic_batching=tc.dynamic_batching((8,))
            ),
            "preferred",
        ),
        (
            lambda: tc.python_model(
                "m",
                [X],
                [Y],
                max_batch_size=2,
                warmup=[
                    tc.model_warmup("w", {"INPUT0": tc.WarmupInput("FP32", (3,))}, batch_size=4)
                ],
            ),
            "warm-up",
        ),
        (
            lambda: tc.python_model(
                "m",
                [X],
                [Y],
                max_batch_size=2,
                warmup=[tc.model_warmup("w", {"OTHER": tc.WarmupInput("FP32", (3,))})],
            ),
            "unknown inputs",
        ),
        (lambda: tc.TensorSpec("x", "FP128", (1,)), "unknown tensor data type"),
        (lambda: tc.TensorSpec("x", "FP32", (0,)), "dims"),
        (lambda: tc.instance_group(0), "count"),
        (lambda: tc.instance_group(1, "tpu"), "kind"),
        (lambda: tc.WarmupInput("FP32", (-1,)).to_proto(), "concrete"),
        (lambda: tc.TensorRTAccelerator(precision_mode="FP8").to_proto(), "precision_mode"),
    ],
)
def test_invalid_configs_raise(build, match):
    with pytest.raises(ConfigError, match=match):
        build()


def test_dtype_spellings():
    assert (
        tc.data_type("FP32") == tc.data_type("TYPE_FP32") == tc.data_type("float32") == mc.TYPE_FP32
    )
    assert tc.data_type("BYTES") == tc.data_type("object") == mc.TYPE_STRING


def test_write_config_folder_must_match_name_and_overwrites_atomically(tmp_path):
    cfg = tc.python_model("m", [X], [Y])
    with pytest.raises(ConfigError, match="same name"):
        tc.write_config(tmp_path / "other", cfg)
    tc.write_config(tmp_path / "m", cfg)
    cfg.max_batch_size = 4
    tc.write_config(tmp_path / "m", cfg)
    assert tc.read_config(tmp_path / "m").max_batch_size == 4
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.pbtxt"]
    assert (
        tc.version_dir(tmp_path / "m") == tmp_path / "m" / "1" and (tmp_path / "m" / "1").is_dir()
    )
    with pytest.raises(ConfigError):
        tc.read_config(tmp_path / "missing")
